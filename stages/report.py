"""Summarize every experiment in params.yaml: reports/summary.csv, summary.md and headline.png."""

import argparse

from torchrepro.core.cli import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args()

    def main() -> None:
        from torchrepro import report
        from torchrepro.core.params import load_params

        report.run(load_params(args.params))

    run(main)
