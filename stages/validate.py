"""Check every value in params.yaml before any other stage runs; writes the marker file the
first stages depend on."""

import argparse

from torchrepro.core.cli import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("marker", help="the file to write when the params are valid")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()

    def main() -> None:
        from torchrepro import validate
        from torchrepro.core.params import load_params

        validate.run(load_params(args.params), args.marker)

    run(main)
