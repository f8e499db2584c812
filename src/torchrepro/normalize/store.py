"""The processed-data store: what the normalize stage writes and every later stage reads.

In data/processed/<dataset>/, one plain .npy file per array, so that it can be memory-mapped:
  x_train.npy, x_test.npy  images: their uint8 pixels (N, C, H, W), normalized a batch at a time
                           where they are used (models/inference.py); tables: (N, F) float32,
                           normalized here
  y_train.npy, y_test.npy  int64 class indices or float32 regression targets
  meta.json                task, classes, feature names, the normalization and the SHA-256 of
                           each .npy file, checked on every load so damage is never trained on
No torch here; the arrays load with allow_pickle=False, memory-mapped unless asked otherwise:
a split costs page cache, which the kernel can drop, not the process's own memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from torchrepro.core.description import Description, check_description
from torchrepro.core.errors import DataError
from torchrepro.core.io import atomic_dir, file_digest, read_json, write_json

FILES = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")
X_DTYPE = {"image": np.uint8, "tabular": np.float32}  # how each kind of input is stored
Count = Annotated[int, Field(ge=1)]


class Meta(Description):
    kind: Literal["image", "tabular"]
    target: str
    n_train: Count
    n_test: Count
    sha256: dict[str, str]


@dataclass
class Prepared:
    """A train/test split as stored (uint8 pixels or normalized features) plus what is needed
    to normalize inputs: the meta's `normalize`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]


def save(prepared: Prepared, out_dir: str | Path) -> None:
    """Write the processed dataset directory atomically, with the digests of its arrays."""
    with atomic_dir(out_dir) as tmp:
        arrays = (prepared.x_train, prepared.y_train, prepared.x_test, prepared.y_test)
        for name, array in zip(FILES, arrays):
            np.save(tmp / name, array, allow_pickle=False)
        digests = {name: file_digest(tmp / name) for name in FILES}
        write_json(tmp / "meta.json", prepared.meta | {"sha256": digests})


def load(data_dir: str | Path, train: bool = True, mmap: bool = True) -> Prepared:
    """Read a processed dataset directory, checking each array file against meta.json's digest
    (read in blocks, never a whole split at once); never unpickles anything. The arrays are
    memory-mapped copy-on-write (nothing writes to them) unless mmap=False. With train=False
    the training split is left on disk (empty arrays)."""
    data_dir = Path(data_dir)
    meta = _load_meta(data_dir / "meta.json")
    empty = (np.empty((0,), np.uint8), np.empty((0,), np.int64))
    x_train, y_train = _load_split(data_dir, "train", meta, mmap) if train else empty
    x_test, y_test = _load_split(data_dir, "test", meta, mmap)
    return Prepared(x_train, y_train, x_test, y_test, meta)


def _restore_hint(path: Path) -> str:
    return f"restore it with `dvc checkout --force {path.parent}` or rerun `dvc repro normalize@{path.parent.name}`"


def _load_meta(path: Path) -> dict[str, Any]:
    try:
        meta = read_json(path, _restore_hint(path))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the normalize stage first") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
        raise DataError(f"{path}: not a processed-data description (no sha256 digests); {_restore_hint(path)}")
    return check_description(meta, path, Meta, _restore_hint(path))


def _load_split(data_dir: Path, split: str, meta: dict[str, Any], mmap: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = (_load_npy(data_dir / f"{name}_{split}.npy", meta, mmap) for name in ("x", "y"))
    if (problem := _array_problem(x, y, meta, split)) is not None:
        name, what = problem
        path = data_dir / f"{name}_{split}.npy"
        raise DataError(f"{path}: {what}; {_restore_hint(path)}")
    return x, y


def _load_npy(path: Path, meta: dict[str, Any], mmap: bool) -> np.ndarray:
    try:
        actual = file_digest(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the normalize stage first") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an array file; {_restore_hint(path)}") from None
    if actual != meta["sha256"].get(path.name):
        raise DataError(f"{path}: its SHA-256 does not match meta.json: the file is damaged; {_restore_hint(path)}")
    try:
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: corrupt or truncated ({error})") from None


def _array_problem(x: np.ndarray, y: np.ndarray, meta: dict[str, Any], split: str) -> tuple[str, str] | None:
    """Which array of a split ("x" or "y") is wrong against meta.json and how, or None. The
    digest says the file is the one normalize wrote; this says it holds what the later stages
    can use."""
    shape, n = tuple(meta["input_shape"]), meta[f"n_{split}"]
    classification = meta["task"] == "classification"
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        return "y", f"{len(y) if y.ndim else 'no'} targets for {len(x) if x.ndim else 'no'} inputs"
    x_dtype = np.dtype(X_DTYPE[meta["kind"]])
    if x.dtype != x_dtype or x.shape[1:] != shape or x.ndim != 1 + len(shape):
        return "x", f"x is {x.dtype} {x.shape}, expected {x_dtype} (N, {', '.join(map(str, shape))})"
    want = np.int64 if classification else np.float32
    if y.dtype != want or y.shape != (len(x),):
        return "y", f"y is {y.dtype} {y.shape}, expected {np.dtype(want)} ({len(x)},)"
    if len(x) != n:
        return "x", f"{len(x)} examples, but meta.json says {n}"
    # A float64 sum needs no array the size of x, and is finite exactly when every value is.
    if x_dtype != np.uint8 and not np.isfinite(np.add.reduce(x.reshape(-1), dtype=np.float64)):
        row = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))[0])
        return "x", f"x holds NaN or infinity (example {row})"
    if classification and (y.min() < 0 or y.max() >= len(meta["classes"])):
        return "y", f"labels must be 0..{len(meta['classes']) - 1} (one per class), found {y.min()}..{y.max()}"
    if not classification and not np.isfinite(y).all():
        return "y", "y holds NaN or infinity"
    return None


def apply(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Normalize new raw feature rows as prepare() normalized the training table. (Pixels are
    normalized where training normalizes them: models/inference.py's Pixels.)"""
    norm = meta["normalize"]
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    return ((x.astype(np.float64) * norm["scale"] - mean) / std).astype(np.float32)


def unapply(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The inverse of apply: normalized inputs back in the source's raw units, float64."""
    norm = meta["normalize"]
    return (x.astype(np.float64) * np.asarray(norm["std"]) + np.asarray(norm["mean"])) / norm["scale"]
