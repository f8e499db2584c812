"""Safe file I/O: atomic writes (a reader, or DVC, sees the old file or the new one, never
half of one) and the digests that state files carry so damage is caught on load.

A write goes to a temporary `.<name>.<random>.tmp` beside its target. A process killed midway
leaves it behind; the next write of the same target removes it, unless a live writer holds
it (each holds a lock on its temporary while it writes).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchrepro.core.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no flock, and a file open there cannot be removed anyway
    fcntl = None

# mkstemp/mkdtemp create private (0600/0700) entries; results should get the usual umask modes.
_UMASK = os.umask(0)
os.umask(_UMASK)
ASIDE = ".old.tmp"  # the previous folder during atomic_dir's swap: complete, so it can go back


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():  # found now, not after the whole file is written and the rename fails
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    with _naming(path, path.parent / f".{path.name}.*.tmp"):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        _lock(fd)
        with _naming(path, tmp_path):
            tmp_path.chmod(0o666 & ~_UMASK)
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    with _naming(path, path.parent / f".{path.name}.*.tmp"):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    held = _hold(tmp)
    try:
        with _naming(path, tmp):
            tmp.chmod(0o777 & ~_UMASK)
            yield tmp
            _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if held is not None:
            os.close(held)


def _swap_in(new: Path, path: Path) -> None:
    """Rename the folder `new` onto `path` so that a complete folder exists at every instant: the
    old one is renamed aside first and removed last. A process killed between the two renames
    leaves the old one aside, and the next write of `path` puts it back (_remove_stale)."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    # A fresh random name, not a placeholder made first: an empty one must never be put back.
    aside = path.parent / f".{path.name}.{secrets.token_hex(8)}{ASIDE}"
    held = _hold(path)  # the lock moves aside with the folder: other writers leave it alone
    try:
        os.replace(path, aside)
        os.replace(new, path)
        _remove(aside)
    finally:
        if held is not None:
            os.close(held)


def _remove_stale(path: Path) -> None:
    """Remove the temporaries that killed writers of `path` left beside it. An old folder that
    atomic_dir had renamed aside goes back to `path` when nothing is there: it is complete."""
    for stale in sorted(path.parent.glob(f"{glob.escape(f'.{path.name}.')}*.tmp")):
        if _in_use(stale):
            continue
        if stale.name.endswith(ASIDE) and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.replace(stale, path)
            continue
        _remove(stale)


def _remove(entry: Path) -> None:
    """Delete a temporary file or folder. A folder set aside is first renamed out of the ASIDE
    pattern, so that one half removed (killed during rmtree) is never put back."""
    with contextlib.suppress(OSError):
        if entry.is_dir() and not entry.is_symlink():
            if entry.name.endswith(ASIDE):
                doomed = entry.with_name(entry.name.removesuffix(".tmp") + ".rm.tmp")
                os.replace(entry, doomed)
                entry = doomed
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _hold(entry: Path) -> int | None:
    """Open and lock `entry`: it counts as in use until the descriptor is closed. None where
    it cannot be opened or locked (a symlink, no permission); the write then goes on unmarked."""
    if fcntl is None or entry.is_symlink():
        return None
    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return None
    _lock(fd)
    return fd


def _lock(fd: int) -> None:
    """Mark a temporary as in use for as long as `fd` stays open (where locks are supported)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without locks: the write goes on unmarked
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _in_use(entry: Path) -> bool:
    """Whether a live writer holds `entry`; True also when that cannot be told (leave it be)."""
    if fcntl is None or entry.is_symlink():
        return False
    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock too
    return False


@contextlib.contextmanager
def _naming(path: Path, tmp: Path) -> Iterator[None]:
    """Make a file-system error raised while writing the temporary `tmp` name `path` instead:
    the temporary is gone by the time the error is reported, and `path` is what the user knows.
    A write that fails for want of space names no file at all (write() fails, not open())."""
    try:
        yield
    except OSError as error:
        for attr in ("filename", "filename2"):
            name = getattr(error, attr)
            if name is None:
                continue
            name = Path(os.fsdecode(name))
            if name == tmp or name.match(str(tmp)):  # the temporary (a pattern until it is made)
                setattr(error, attr, str(path))
            elif tmp in name.parents:  # a file inside a temporary directory
                setattr(error, attr, str(path / name.relative_to(tmp)))
        if error.filename is None:
            error.filename = str(path)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    """Stable JSON: sorted keys and a trailing newline, so equal content gives equal bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def rounded(value: float, digits: int = 6, significant: bool = True) -> float:
    """`value` to `digits` significant digits or, with significant=False, decimal places
    (exactly round(value, digits)): metrics files hold stable decimals, so a diff between runs
    shows a change, not float noise."""
    return float(format(float(value), f".{digits}{'g' if significant else 'f'}"))


def read_json(path: Path, hint: str) -> Any:
    """A JSON file's content; a missing file raises FileNotFoundError, any other problem a
    DataError naming the file and `hint`."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSON file; {hint}") from None
    # ValueError: JSONDecodeError, and integers too long to convert
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise DataError(f"{path}: not valid JSON ({str(error)[:200]}); {hint}") from None


def file_digest(*paths: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of the bytes of the given files, in order, e.g. file_digest(p, algorithm="md5")."""
    digest = hashlib.new(algorithm)
    for path in paths:
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def bytes_digest(data: bytes) -> str:
    """SHA-256 of bytes already in memory, as hex."""
    return hashlib.sha256(data).hexdigest()


def json_digest(obj: Any) -> str:
    """SHA-256 of `obj` as JSON with sorted keys, as hex; TypeError for what JSON cannot encode."""
    return bytes_digest(json.dumps(obj, sort_keys=True).encode())


def require_regular_file(path: str | Path, what: str, hint: str = "") -> None:
    """Refuse anything but a regular file (links followed) before it is opened: opening a FIFO
    waits for a writer, /dev/zero never ends, a folder or a socket has no content to read.
    A missing path passes: the caller's open reports it, in its own words."""
    path = Path(path)
    if path.is_file() or not path.exists():
        return
    kinds = {
        "a folder": path.is_dir,
        "a named pipe (FIFO)": path.is_fifo,
        "a socket": path.is_socket,
        "a character device": path.is_char_device,
        "a block device": path.is_block_device,
    }
    kind = next((name for name, test in kinds.items() if test()), "not a regular file")
    link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
    raise DataError(f"{path}{link}: is {kind}, not {what}{'; ' + hint if hint else ''}")
