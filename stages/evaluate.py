"""Evaluate a trained experiment on its test split: metrics/<experiment>/evaluate/, predictions/<experiment>.csv."""

from torchrepro.core.cli import stage

if __name__ == "__main__":
    stage(__doc__, "experiment", "torchrepro.evaluate")
