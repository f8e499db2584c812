"""What every entry point shares: argument parsing and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Callable

from torchrepro.core.errors import UserError

# What to do about the file-system errors a user can fix, by errno.
FIXES = {
    errno.ENOSPC: "no space left on the device; free some space and run again",
    errno.EDQUOT: "disk quota exceeded; free some space and run again",
    errno.EACCES: "permission denied; fix the permissions or run from a folder you can write",
    errno.EPERM: "operation not permitted; fix the permissions or run from a folder you can write",
    errno.EROFS: "read-only file system; run from a writable checkout",
}


def describe_os_error(error: OSError) -> str | None:
    """One line for a file-system error a user can fix, naming the path; None for others."""
    fix = FIXES.get(error.errno)
    if fix is None:
        return None
    where = error.filename or "a file"
    return f"{where}: {fix}"


def run(main: Callable[[], object]) -> None:
    """Call main(); a UserError becomes `error: ...` on stderr and exit status 2, Ctrl-C exit 130."""
    try:
        main()
    except UserError as error:
        fail(str(error))
    except OSError as error:
        if isinstance(error, BrokenPipeError):  # output piped into `head` and the reader left
            sys.stderr.close()
            sys.exit(0)
        if (line := describe_os_error(error)) is None:
            raise
        fail(line)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def stage(doc: str, target: str, module: str, argv: list[str] | None = None) -> None:
    """A pipeline stage: `<script> NAME [--params FILE]` calls `module.run(params, NAME)`.

    `target` is "dataset" or "experiment": NAME is a key under that section of params.yaml.
    The module is imported after the params are read and the determinism environment is set,
    so --help is instant, torch sees that environment, and a stage imports only what it needs
    (download and normalize never import torch).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(target, help=f"a key under `{target}s:` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    def main() -> None:
        from torchrepro.core import determinism
        from torchrepro.core.params import load_params

        params = load_params(args.params)
        name = getattr(args, target)
        (params.experiment if target == "experiment" else params.dataset)(name)  # a typo fails here
        determinism.prepare_environment(params.determinism)
        importlib.import_module(module).run(params, name)

    run(main)
