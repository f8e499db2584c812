"""Draw an experiment's figures into plots/<experiment>/ (learning curves, confusion matrix,
misclassified digits or the regression fit); with --activations, the activation-function figure."""

import argparse
import sys

from torchrepro.core.cli import run, stage

if __name__ == "__main__":
    if "--activations" in sys.argv[1:]:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--activations", metavar="PNG", required=True, help="write the figure here")
        args = parser.parse_args()

        def main() -> None:
            from torchrepro.plot import activations

            activations(args.activations)

        run(main)
    else:
        stage(__doc__, "experiment", "torchrepro.plot")
