"""Train an experiment's model: models/<experiment>/, metrics/<experiment>/train/ (timings: logs/<experiment>.json)."""

from torchrepro.core.cli import stage

if __name__ == "__main__":
    stage(__doc__, "experiment", "torchrepro.train.stage")
