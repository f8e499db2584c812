"""Train an experiment's model: models/<experiment>/, metrics/<experiment>/train/ (timings: logs/<experiment>.json)."""

from torchrepro.core.cli import stage


def main(params, experiment: str) -> None:
    from torchrepro.train.stage import run  # here, not above: torch reads the determinism environment when imported

    run(params, experiment)


if __name__ == "__main__":
    stage(__doc__, "experiment", main)
