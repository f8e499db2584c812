"""Fetch a dataset's raw files into data/raw/<dataset>/ (offline for the bundled sources)."""

from torchrepro.core.cli import stage


def main(params, dataset: str) -> None:
    from torchrepro.download import run  # here, not above: --help answers without it

    run(params, dataset)


if __name__ == "__main__":
    stage(__doc__, "dataset", main)
