"""Safe file I/O: atomic writes (a reader, or DVC, sees the old file or the new one, never
half of one) and the digests that state files carry so damage is caught on load."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchrepro.core.errors import DataError

# mkstemp/mkdtemp create private (0600/0700) entries; results should get the usual umask modes.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():  # found now, not after the whole file is written and the rename fails
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    with _naming(path, path.parent / f".{path.name}.*.tmp"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(path, tmp_path):
            tmp_path.chmod(0o666 & ~_UMASK)
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    with _naming(path, path.parent / f".{path.name}.*.tmp"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _naming(path, tmp):
            tmp.chmod(0o777 & ~_UMASK)
            yield tmp
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
