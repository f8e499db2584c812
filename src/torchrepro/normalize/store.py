"""The processed-data store: what the normalize stage writes and every later stage reads.

In data/processed/<dataset>/:
  train.npz, test.npz  x float32 (N, C, H, W) images or (N, F) tabular; y int64 or float32
  meta.json            task, classes, feature names, the normalization and the SHA-256 of
                       both .npz files, checked on every load so damage is never trained on
No torch here; the arrays load with allow_pickle=False.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from torchrepro.core.description import Description, check_description
from torchrepro.core.errors import DataError
from torchrepro.core.io import atomic_dir, file_digest, read_json, write_json

SPLITS = ("train.npz", "test.npz")
Count = Annotated[int, Field(ge=1)]


class Meta(Description):
    kind: Literal["image", "tabular"]
    target: str
    n_train: Count
    n_test: Count
    sha256: dict[str, str]


@dataclass
class Prepared:
    """A normalized train/test split plus what is needed to normalize new inputs."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]


def save(prepared: Prepared, out_dir: str | Path) -> None:
    """Write the processed dataset directory atomically, with the digests of its arrays."""
    with atomic_dir(out_dir) as tmp:
        np.savez(tmp / "train.npz", x=prepared.x_train, y=prepared.y_train)
        np.savez(tmp / "test.npz", x=prepared.x_test, y=prepared.y_test)
        digests = {name: file_digest(tmp / name) for name in SPLITS}
        write_json(tmp / "meta.json", prepared.meta | {"sha256": digests})


def load(data_dir: str | Path, train: bool = True) -> Prepared:
    """Read a processed dataset directory, checking each array file against meta.json's digest;
    never unpickles anything. With train=False the training split is left on disk (empty
    arrays): evaluating 10,000 images need not hold 60,000."""
    data_dir = Path(data_dir)
    meta = _load_meta(data_dir / "meta.json")
    empty = (np.empty((0,), np.float32), np.empty((0,), np.int64))
    x_train, y_train = _load_npz(data_dir / "train.npz", meta) if train else empty
    x_test, y_test = _load_npz(data_dir / "test.npz", meta)
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


def _load_npz(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        actual = file_digest(path)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the normalize stage first") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an array file; {_restore_hint(path)}") from None
    if actual != meta["sha256"].get(path.name):
        raise DataError(f"{path}: its SHA-256 does not match meta.json: the file is damaged; {_restore_hint(path)}")
    try:
        # Our own handle: np.load leaks the one it opens when the zip is damaged (BadZipFile).
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: corrupt or truncated ({error})") from None
    if (problem := _array_problem(x, y, meta, path.name)) is not None:
        raise DataError(f"{path}: {problem}; {_restore_hint(path)}")
    return x, y


def _array_problem(x: np.ndarray, y: np.ndarray, meta: dict[str, Any], name: str) -> str | None:
    """What is wrong with a split's arrays against meta.json, or None. The digest says the file
    is the one normalize wrote; this says it holds what the later stages can use."""
    shape, n = tuple(meta["input_shape"]), meta["n_train" if name == "train.npz" else "n_test"]
    classification = meta["task"] == "classification"
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        return f"{len(x) if x.ndim else 'no'} inputs but {len(y) if y.ndim else 'no'} targets"
    if x.dtype != np.float32 or x.shape[1:] != shape or x.ndim != 1 + len(shape):
        return f"x is {x.dtype} {x.shape}, expected float32 (N, {', '.join(map(str, shape))})"
    want = np.int64 if classification else np.float32
    if y.dtype != want or y.shape != (len(x),):
        return f"y is {y.dtype} {y.shape}, expected {np.dtype(want)} ({len(x)},)"
    if len(x) != n:
        return f"{len(x)} examples, but meta.json says {n}"
    # A float64 sum needs no array the size of x, and is finite exactly when every value is.
    if not np.isfinite(np.add.reduce(x.reshape(-1), dtype=np.float64)):
        row = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))[0])
        return f"x holds NaN or infinity (example {row})"
    if classification and (y.min() < 0 or y.max() >= len(meta["classes"])):
        return f"labels must be 0..{len(meta['classes']) - 1} (one per class), found {y.min()}..{y.max()}"
    if not classification and not np.isfinite(y).all():
        return "y holds NaN or infinity"
    return None


def apply(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Normalize new raw inputs (pixels 0-255 or raw feature values) as the training data was."""
    norm = meta["normalize"]
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    return ((x.astype(np.float64) * norm["scale"] - mean) / std).astype(np.float32)


def unapply(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The inverse of apply: normalized inputs back in the source's raw units, float64."""
    norm = meta["normalize"]
    return (x.astype(np.float64) * np.asarray(norm["std"]) + np.asarray(norm["mean"])) / norm["scale"]
