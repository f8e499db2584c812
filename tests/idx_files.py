"""IDX files for the tests: the pipeline only reads them (download/idx.py), the tests write them."""

import gzip as gzip_module
from pathlib import Path

import numpy as np

UINT8 = 0x08  # the type code of uint8 items, the only kind MNIST uses


def write_idx(path: Path, array: np.ndarray, gzip: bool = False) -> None:
    """Write a uint8 array as an IDX file, gzipped if asked (mtime 0: the same bytes every time)."""
    array = np.ascontiguousarray(array)
    assert array.dtype == np.uint8 and 1 <= array.ndim <= 255, (array.dtype, array.ndim)
    header = bytes([0, 0, UINT8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(gzip_module.compress(data, mtime=0) if gzip else data)
