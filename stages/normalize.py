"""Split a dataset into train/test and scale it with training statistics: data/processed/<dataset>/."""

from torchrepro.core.cli import stage


def main(params, dataset: str) -> None:
    from torchrepro.normalize.prepare import run  # here, not above: --help answers without it

    run(params, dataset)


if __name__ == "__main__":
    stage(__doc__, "dataset", main)
