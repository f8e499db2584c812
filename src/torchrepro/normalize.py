"""Split a Table into train/test and scale it with statistics from the training split only.

Output of the normalize stage, in data/processed/<dataset>/:
  train.npz, test.npz  x float32 (N, 1, 28, 28) images or (N, F) tabular; y int64 or float32
  meta.json            task, classes, feature names and the normalization statistics
No torch here: the stage must start fast, and the arrays load with allow_pickle=False.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from torchrepro.atomic import atomic_dir, write_json
from torchrepro.errors import DataError

if TYPE_CHECKING:  # annotations only: train and evaluate load processed data without the dataset sources
    from torchrepro.datasets import Table


@dataclass
class Prepared:
    """A normalized train/test split plus what is needed to normalize new inputs."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]


def split_indices(table: Table, test_size: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: the source's own split, a seeded (stratified) one, or all rows twice."""
    n = len(table.y)
    if table.is_test is not None:
        return np.flatnonzero(~table.is_test), np.flatnonzero(table.is_test)
    if test_size is None:  # no split: train and evaluate on every row, as the regression recipes do
        return np.arange(n), np.arange(n)
    from sklearn.model_selection import train_test_split

    stratify = table.y if table.task == "classification" else None
    n_test = int(np.ceil(test_size * n))
    n_groups = len(np.unique(table.y)) if stratify is not None else 1
    if n_test < n_groups or n - n_test < n_groups:
        raise DataError(
            f"{n} rows are too few for test_size {test_size}: "
            f"need at least {n_groups} rows in each of train and test"
        )
    train, test = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def standardize_stats(x_train: np.ndarray, per_feature: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training split; one scalar for images, one per column for tables."""
    axis = 0 if per_feature else None
    mean = np.asarray(x_train.mean(axis=axis, dtype=np.float64))
    std = np.asarray(x_train.std(axis=axis, dtype=np.float64))
    return mean, np.where(std > 0, std, 1.0)  # a constant feature is left centred, not divided by 0


def prepare(table: Table, test_size: float | None, seed: int, method: str) -> Prepared:
    """Split, scale images to [0, 1], standardize with training statistics (method='standardize')."""
    train, test = split_indices(table, test_size, seed)
    image = table.kind == "image"
    # Images in float32 and in place: 70,000 of them in float64 would take 440 MB.
    # Statistics are accumulated in float64 either way.
    if image:
        x = table.x.astype(np.float32)
        x /= np.float32(255)
    else:
        x = table.x.astype(np.float64)
    mean, std = standardize_stats(x[train], per_feature=not image)
    if method == "none":
        mean, std = np.zeros_like(mean), np.ones_like(std)
    x -= mean.astype(x.dtype)
    x /= std.astype(x.dtype)
    if image:
        x = x[:, None, :, :]  # (N, 1, H, W): one channel, as convolutions expect
    y_dtype = np.int64 if table.task == "classification" else np.float32
    meta = {
        "task": table.task,
        "kind": table.kind,
        "input_shape": list(x.shape[1:]),
        "classes": table.classes,
        "feature_names": table.feature_names,
        "target": table.target_name,
        "normalize": {
            "method": method,
            "scale": 1 / 255 if image else 1.0,  # applied before mean/std
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "split": "source" if table.is_test is not None else ("none" if test_size is None else test_size),
    }
    return Prepared(
        x[train].astype(np.float32, copy=False),
        table.y[train].astype(y_dtype, copy=False),
        x[test].astype(np.float32, copy=False),
        table.y[test].astype(y_dtype, copy=False),
        meta,
    )


def save(prepared: Prepared, out_dir: str | Path) -> None:
    """Write the processed dataset directory atomically."""
    with atomic_dir(out_dir) as tmp:
        np.savez(tmp / "train.npz", x=prepared.x_train, y=prepared.y_train)
        np.savez(tmp / "test.npz", x=prepared.x_test, y=prepared.y_test)
        write_json(tmp / "meta.json", prepared.meta)


def load(data_dir: str | Path, train: bool = True) -> Prepared:
    """Read a processed dataset directory; never unpickles anything. With train=False the
    training split is left on disk (empty arrays): evaluating 10,000 images need not hold 60,000."""
    data_dir = Path(data_dir)
    empty = (np.empty((0,), np.float32), np.empty((0,), np.int64))
    arrays = [_load_npz(data_dir / "train.npz") if train else empty, _load_npz(data_dir / "test.npz")]
    meta_path = data_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{meta_path}: not found; run the normalize stage first") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{meta_path}: not valid JSON ({error})") from None
    (x_train, y_train), (x_test, y_test) = arrays
    return Prepared(x_train, y_train, x_test, y_test, meta)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        # Our own handle: np.load leaks the one it opens when the zip is damaged (BadZipFile).
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the normalize stage first") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: corrupt or truncated ({error})") from None
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} targets")
    return x, y


def apply(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Normalize new raw inputs (pixels 0-255 or raw feature values) as the training data was."""
    norm = meta["normalize"]
    mean, std = np.asarray(norm["mean"]), np.asarray(norm["std"])
    return ((x.astype(np.float64) * norm["scale"] - mean) / std).astype(np.float32)


def run(params, dataset: str) -> dict[str, Any]:
    """The normalize stage: data/raw/<dataset> -> data/processed/<dataset>. Returns the meta."""
    from torchrepro import datasets

    cfg = params.dataset(dataset)
    table = datasets.load(dataset, cfg.source, params.paths.raw_dir(dataset))
    test_size, seed = (None, 0) if cfg.split == "none" else (cfg.split.test_size, cfg.split.seed)
    prepared = prepare(table, test_size, seed, cfg.normalize)
    save(prepared, params.paths.processed_dir(dataset))
    return prepared.meta
