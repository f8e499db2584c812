"""What every entry point shares: argument parsing and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from torchrepro.errors import UserError


def run(main: Callable[[], object]) -> None:
    """Call main(); a UserError becomes `error: ...` on stderr and exit status 2, Ctrl-C exit 130."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the reader left: not an error
        sys.stderr.close()
        sys.exit(0)


def stage(doc: str, target: str, module: str, argv: list[str] | None = None) -> None:
    """A pipeline stage: `<script> NAME [--params FILE]` calls `module.run(params, NAME)`.

    `target` is "dataset" or "experiment": NAME is a key under that section of params.yaml.
    The module is imported after parsing, so --help is instant and a stage imports only
    what it needs (download and normalize never import torch).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(target, help=f"a key under `{target}s:` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    def main() -> None:
        from torchrepro.params import load_params

        importlib.import_module(module).run(load_params(args.params), getattr(args, target))

    run(main)
