"""Draw an experiment's figures into plots/<experiment>/ (learning curves, confusion matrix,
misclassified digits or the regression fit); with --activations, the activation-function figure."""

import argparse
import sys

from torchrepro.core.cli import run, stage


def main(params, experiment: str) -> None:
    from torchrepro import plot  # here, not above: --help answers without matplotlib

    plot.run(params, experiment)


def activations(png: str) -> None:
    from torchrepro import plot

    plot.activations(png)


if __name__ == "__main__":
    if "--activations" in sys.argv[1:]:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--activations", metavar="PNG", required=True, help="write the figure here")
        args = parser.parse_args()
        run(lambda: activations(args.activations))
    else:
        stage(__doc__, "experiment", main)
