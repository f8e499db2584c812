"""Train an experiment's model: models/<experiment>/, metrics/<experiment>/history.csv, logs/<experiment>.json."""

from torchrepro.cli import stage

if __name__ == "__main__":
    stage(__doc__, "experiment", "torchrepro.train")
