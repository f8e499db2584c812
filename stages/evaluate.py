"""Evaluate a trained experiment on its test split: metrics/<experiment>/evaluate/, predictions/<experiment>.csv."""

from torchrepro.core.cli import stage


def main(params, experiment: str) -> None:
    from torchrepro.evaluate import run  # here, not above: torch reads the determinism environment when imported

    run(params, experiment)


if __name__ == "__main__":
    stage(__doc__, "experiment", main)
