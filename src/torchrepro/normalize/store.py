"""The processed-data store: what the normalize stage writes and every later stage reads.

In data/processed/<dataset>/:
  train.npz, test.npz  x float32 (N, 1, 28, 28) images or (N, F) tabular; y int64 or float32
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from torchrepro.core.errors import DataError, first_error
from torchrepro.core.io import atomic_dir, file_digest, read_json, write_json

SPLITS = ("train.npz", "test.npz")
Count = Annotated[int, Field(ge=1)]


class Normalization(BaseModel):
    """x -> (x * scale - mean) / std; mean and std are scalars or arrays that broadcast to one input."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    method: str
    scale: Annotated[float, Field(gt=0)]
    mean: Any
    std: Any


class Description(BaseModel):
    """What meta.json and model.json both say about the data. Their digests catch damage to the
    array and weight files; this catches an edited or foreign description before its values
    reach numpy or torch as shapes, class lists or divisors."""

    model_config = ConfigDict(extra="allow", strict=True)
    task: Literal["classification", "regression"]
    input_shape: Annotated[list[Annotated[int, Field(ge=1, le=2**20)]], Field(min_length=1, max_length=3)]
    classes: list[str]
    feature_names: list[str]
    normalize: Normalization

    @model_validator(mode="after")
    def _consistent(self) -> Description:
        if self.task == "classification" and (not self.classes or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"classes: a classifier needs distinct class names, got {self.classes}")
        if self.task == "regression" and self.classes:
            raise ValueError("classes: a regression has no classes")
        if len(self.input_shape) == 1 and len(self.feature_names) != self.input_shape[0]:
            raise ValueError(f"feature_names: {len(self.feature_names)} names for {self.input_shape[0]} features")
        for name in ("mean", "std"):
            try:
                value = np.asarray(getattr(self.normalize, name), dtype=np.float64)
                np.broadcast_shapes(value.shape, tuple(self.input_shape))
            except (ValueError, TypeError):
                raise ValueError(f"normalize.{name}: not numbers of the input's shape {self.input_shape}") from None
            if not np.isfinite(value).all() or (name == "std" and not (value > 0).all()):
                raise ValueError(f"normalize.{name}: must be finite{' and positive' if name == 'std' else ''}")
        return self


class Meta(Description):
    kind: Literal["image", "tabular"]
    target: str
    n_train: Count
    n_test: Count
    sha256: dict[str, str]


def check_description(raw: Any, path: Path, schema: type[Description], hint: str) -> dict[str, Any]:
    """`raw` (parsed JSON) if it fits `schema`, else a DataError naming the file, the key and `hint`."""
    try:
        schema.model_validate(raw)
    except ValidationError as error:
        first = first_error(error)
        raise DataError(f"{path}: {first.where + ': ' if first.where else ''}{first.message}; {hint}") from None
    return raw


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
