"""Fetch a dataset's raw files into data/raw/<dataset>/ (offline for the bundled sources)."""

from torchrepro.core.cli import stage

if __name__ == "__main__":
    stage(__doc__, "dataset", "torchrepro.download")
