"""What every entry point shares: argument parsing and one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import errno
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torchrepro.core.errors import UserError

if TYPE_CHECKING:
    from torchrepro.core.params import Params

# What to do about the file-system errors a user can fix, by errno.
FIXES = {
    errno.ENOSPC: "no space left on the device; free some space and run again",
    errno.EDQUOT: "disk quota exceeded; free some space and run again",
    errno.EACCES: "permission denied; fix the permissions or run from a folder you can write",
    errno.EPERM: "operation not permitted; fix the permissions or run from a folder you can write",
    errno.EROFS: "read-only file system; run from a writable checkout",
    errno.EISDIR: "is a folder where a file belongs; remove it or choose another path",
    errno.ENOTDIR: "a part of this path is a file where a folder belongs; remove it or choose another path",
    errno.EEXIST: "exists and is not a folder; remove it or choose another path",
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
}


def describe_os_error(error: OSError) -> str | None:
    """One line for a file-system error a user can fix, naming the path; None for others."""
    fix = FIXES.get(error.errno)
    if fix is None:
        return None
    if error.errno == errno.ENOSPC:  # how much is free tells whether a retry can work
        fix = f"no space left on the device ({_free_space(error.filename)} free); free some space and run again"
    where = error.filename or f"a file under {Path.cwd()}"  # a failed write() names no file
    return f"{where}: {fix}"


def _free_space(path: str | None) -> str:
    """Free space on the file system holding `path` (or the working folder), as '12 KiB'."""
    folder = Path(path) if path else Path.cwd()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        size = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size, units = size / 1024, units[1:]
    return f"{size:.0f} {units[0]}"


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
    except MemoryError:
        fail("out of memory; close other programs, or use smaller inputs or a smaller train.batch_size")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def stage(doc: str, target: str, main: Callable[[Params, str], object], argv: list[str] | None = None) -> None:
    """A pipeline stage: `<script> NAME [--params FILE]` calls `main(params, NAME)`.

    `target` is "dataset" or "experiment": NAME is a key under that section of params.yaml.
    `main` runs after the params are read and the determinism environment is set: a stage
    script imports its library inside it, so --help is instant, torch sees that environment,
    and a stage imports only what it needs (download and normalize never import torch).
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(target, help=f"a key under `{target}s:` in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    def checked_main() -> None:
        from torchrepro.core import determinism
        from torchrepro.core.params import load_params

        params = load_params(args.params)
        name = getattr(args, target)
        (params.experiment if target == "experiment" else params.dataset)(name)  # a typo fails here
        determinism.prepare_environment(params.determinism)
        main(params, name)

    run(checked_main)
