"""Split a Table into train/test and find the scaling from the training split only.

Tables are scaled here and stored as float32. Images are stored as their uint8 pixels, a
quarter of the bytes; the scaling found here is applied a batch at a time where they are used
(models/inference.py), by the same float32 operations. No torch here: the stage must start
fast. The result goes to the store (store.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from torchrepro.core.errors import DataError
from torchrepro.normalize.store import Prepared, save

if TYPE_CHECKING:  # annotations only: the sources are imported where a dataset is read
    from torchrepro.download.sources import Table


def split_indices(
    table: Table, test_size: float | None, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: the source's own split, a seeded one (stratified by label
    for classification when `stratify`), or every row for both when test_size is None."""
    n = len(table.y)
    if table.is_test is not None:
        return np.flatnonzero(~table.is_test), np.flatnonzero(table.is_test)
    if test_size is None:  # no split: train and evaluate on every row, as the regression recipes do
        return np.arange(n), np.arange(n)
    from sklearn.model_selection import train_test_split

    by_label = table.y if stratify and table.task == "classification" else None
    n_test = int(np.ceil(test_size * n))
    n_groups = len(np.unique(table.y)) if by_label is not None else 1
    if n_test < n_groups or n - n_test < n_groups:
        raise DataError(
            f"{n} rows are too few for test_size {test_size}: need at least {n_groups} rows in each of train and test"
        )
    train, test = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=by_label)
    return np.sort(train), np.sort(test)


# Without `normalize:`, what the tutorials do: images to [0, 1] (ToTensor), tables standardized.
DEFAULT_METHOD = {"image": "unit", "tabular": "per_feature"}


def statistics(x_train: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The (offset, divisor) that map training inputs as `method` says, in float64:
    x -> (x - offset) / divisor. A constant feature is left centred, not divided by 0.

    per_feature on images divides each pixel by at least the std of all training pixels: a
    border pixel that is almost always 0 has a std near 0, and dividing by it would turn one
    bright test pixel into a value in the hundreds. No pixel is then scaled up more than the
    `global` method scales it."""
    if method == "none" or (method == "unit" and x_train.ndim >= 3):  # images: / 255 is all of unit
        shape = x_train.shape[1:] if x_train.ndim == 2 else ()
        return np.zeros(shape), np.ones(shape)
    if method == "unit":  # features by the training min and max
        low, high = x_train.min(axis=0), x_train.max(axis=0)
        offset, divisor = low.astype(np.float64), (high - low).astype(np.float64)
    else:
        axis = None if method == "global" else 0  # global: one scalar over the whole matrix
        offset = np.asarray(x_train.mean(axis=axis, dtype=np.float64))
        divisor = np.asarray(x_train.std(axis=axis, dtype=np.float64))
        if method == "per_feature" and x_train.ndim >= 3:
            divisor = np.maximum(divisor, x_train.std(dtype=np.float64))
    return offset, np.where(divisor > 0, divisor, 1.0)


def scaled_pixels(pixels: np.ndarray, scale: float) -> np.ndarray:
    """uint8 pixels as float32 inputs before the statistics: pixels / 255, or as they are for
    `none` (scale 1). The same float32 division a training batch makes (models/inference.py)."""
    x = pixels.astype(np.float32)
    if scale != 1.0:
        x /= np.float32(255)
    return x


def prepare(table: Table, test_size: float | None, seed: int, method: str, stratify: bool = True) -> Prepared:
    """Split, then find the training split's statistics for `method` (none, unit, global,
    per_feature). Tables are normalized here; images keep their uint8 pixels, and the meta's
    `normalize` says how the device scales them (to [0, 1] unless 'none', then by the statistics)."""
    if table.task == "classification" and len(np.unique(table.y)) < 2:
        found = table.classes[int(table.y[0])] if table.classes and len(table.y) else "none"
        raise DataError(
            f"target {table.target_name!r} has one class ({found!r}) in the data; classification needs at least "
            "two (a target with one value is no classification task; use task: regression for numbers)"
        )
    train, test = split_indices(table, test_size, seed, stratify)
    image = table.kind == "image"
    scale = 1 / 255 if image and method != "none" else 1.0
    if image:  # uint8 pixels, stored as they are
        pixels = table.x[train]
        if method in ("global", "per_feature"):  # statistics of the float32 inputs the model is fed
            pixels = scaled_pixels(pixels, scale)
        offset, divisor = statistics(pixels, method)
        x = table.x[:, None] if table.x.ndim == 3 else table.x  # (N, 1, H, W): one channel; RGB is (N, 3, H, W)
    else:
        x = table.x.astype(np.float64)  # tables are small: scaled here, in float64, stored as float32
        offset, divisor = statistics(x[train], method)
        x = ((x - offset) / divisor).astype(np.float32)
    y_dtype = np.int64 if table.task == "classification" else np.float32
    meta = {
        "task": table.task,
        "kind": table.kind,
        "input_shape": list(x.shape[1:]),
        "classes": table.classes,
        "feature_names": table.feature_names,
        "target": table.target_name,
        "normalize": {"method": method, "scale": scale, "mean": offset.tolist(), "std": divisor.tolist()}
        | ({"pixels": table.pixels} if table.pixels is not None else {}),  # model.json carries it to predict
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "split": _describe_split(table, test_size, stratify),
    }
    return Prepared(
        x[train],
        table.y[train].astype(y_dtype, copy=False),
        x[test],
        table.y[test].astype(y_dtype, copy=False),
        meta,
    )


def _describe_split(table: Table, test_size: float | None, stratify: bool) -> Any:
    if table.is_test is not None:
        return "source"
    if test_size is None:
        return "none"
    return {"test_size": test_size, "stratified": stratify and table.task == "classification"}


def run(params, dataset: str) -> dict[str, Any]:
    """The normalize stage: data/raw/<dataset> -> data/processed/<dataset>. Returns the meta."""
    from torchrepro import download

    cfg = params.dataset(dataset)
    table = download.load(dataset, cfg.source, params.paths.raw_dir(dataset))
    if cfg.split == "none":
        test_size, seed, stratify = None, 0, False
    else:
        test_size, seed, stratify = cfg.split.test_size, cfg.split.seed, cfg.split.stratify
    method = cfg.normalize or DEFAULT_METHOD[table.kind]
    prepared = prepare(table, test_size, seed, method, stratify)
    save(prepared, params.paths.processed_dir(dataset))
    return prepared.meta
