"""Split a dataset into train/test and scale it with training statistics: data/processed/<dataset>/."""

from torchrepro.core.cli import stage

if __name__ == "__main__":
    stage(__doc__, "dataset", "torchrepro.normalize.prepare")
