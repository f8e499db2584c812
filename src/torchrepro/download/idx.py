"""IDX files, the format MNIST and its look-alikes ship in; gzipped or plain.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the items row-major.
Only uint8 data (type code 0x08) is supported, which is all MNIST uses.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from torchrepro.core.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
UINT8 = 0x08


def is_gzip(path: Path) -> bool:
    """Whether the file starts with the gzip magic bytes (the extension is not trusted)."""
    with open(path, "rb") as file:
        return file.read(2) == GZIP_MAGIC


def open_content(path: Path) -> BinaryIO:
    """Open a file for reading its content, decompressing it on the fly if it is gzipped."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a uint8 IDX file with `ndim` dimensions; any mismatch is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: IDX file not found")
    try:
        with open_content(path) as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None
    shape = _parse_header(path, data, ndim)
    header_bytes = 4 + 4 * ndim
    expected = header_bytes + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(
            f"{path}: header says shape {shape}, so {expected} bytes, but the content has {len(data)} bytes"
            " (truncated or corrupt file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(shape)


def _parse_header(path: Path, data: bytes, ndim: int) -> tuple[int, ...]:
    """Check the magic number and return the dimensions it announces."""
    want = (UINT8 << 8) | ndim
    magic = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and magic != want:
        raise DataError(
            f"{path}: IDX magic number is 0x{magic:08x}, expected 0x{want:08x} (uint8 data, {ndim} dimension(s))"
        )
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header with {ndim} dimension(s)")
    return tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def read_images_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file (N, rows, cols) and its labels file (N,); the counts must agree."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels, but {images_path} has {len(images)} images")
    return images, labels
