"""Evaluate a trained experiment on its test split: metrics/<experiment>.json and metrics/<experiment>/predictions.csv."""

from torchrepro.cli import stage

if __name__ == "__main__":
    stage(__doc__, "experiment", "torchrepro.evaluate")
