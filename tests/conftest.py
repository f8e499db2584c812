"""Shared fixtures: tiny generated datasets and a tiny params tree whose paths are relative, as
params.yaml's must be: a test that uses it runs in its own tmp_path, the project's folder.

Nothing here downloads or reads the project's data/ directory; every test gets fresh files.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from torchrepro.core import determinism

# Before torch is imported: the tests run under the shipped `determinism: portable`, as the
# stages do (a fixed thread count, ATen and oneDNN at AVX2, MKL's reproducible branch).
determinism.prepare_environment("portable", os.environ)
# The suite runs processes side by side on few cores (the default pipeline in the background,
# stage processes beside pytest's own), so portable's two OpenMP threads often share a core with
# other work: spinning at each barrier for a descheduled peer made small trainings several times
# slower. Waiting passively changes no result, only who gets the core; the stages inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from torchrepro.core.params import Params, parse_params  # noqa: E402
from torchrepro.download.sources import Table, image_table  # noqa: E402
from torchrepro.normalize import prepare, store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def digit_table(n: int = 60, seed: int = 0) -> Table:
    """n 28x28 uint8 "digits", n/10 per class: class k lights up row band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label + 4 : 2 * label + 6, 4:24] = 250
    return image_table(images, labels, Path("generated"))


def regression_table(n: int = 20, seed: int = 0) -> Table:
    """y = 3 x0 - 2 x1 + 1 plus a little noise, on features with nonzero mean and non-unit scale."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=[5.0, -2.0], scale=[2.0, 0.5], size=(n, 2))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 1 + rng.normal(scale=0.1, size=n)
    return Table(x=x, y=y, task="regression", feature_names=["a", "b"], target_name="y")


def blob_table(n: int = 90, seed: int = 0) -> Table:
    """Three well-separated Gaussian blobs in 4-d: a tabular classification problem."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = np.array([[2.0, 0, 0, 1], [-2.0, 1, 0, 0], [0, -2.0, 1, 0]])
    x = centres[y] + rng.normal(scale=0.5, size=(n, 4))
    return Table(
        x=x,
        y=y.astype(np.int64),
        task="classification",
        feature_names=["f0", "f1", "f2", "f3"],
        target_name="kind",
        classes=["a", "b", "c"],
    )


CSV_DIR = Path("data/csv")  # where a csv source's file must lie, relative to the project's folder


def blob_csv_source(path: str = "data/csv/blobs.csv") -> dict:
    """The params `source` that reads blob_table() written as a CSV file at `path`."""
    return {
        "name": "csv",
        "path": path,
        "features": ["f0", "f1", "f2", "f3"],
        "target": "kind",
        "task": "classification",
    }


@pytest.fixture
def digits() -> Table:
    return digit_table()


@pytest.fixture
def regression() -> Table:
    return regression_table()


@pytest.fixture
def blobs() -> Table:
    return blob_table()


def tiny_params_dict() -> dict:
    """A params tree like params.yaml, shrunk: 2-3 epochs, CPU, paths relative to the folder the
    test runs in (the line dataset reads data/csv/line.csv there)."""
    return {
        "device": "cpu",
        "seed": 0,
        "determinism": "portable",
        "launcher": "python",
        "paths": {
            name: name
            for name in ("raw", "processed", "models", "metrics", "predictions", "plots", "logs", "reports", "resume")
        },
        "datasets": {
            "digits": {"source": {"name": "mnist-5k"}, "split": {"test_size": 0.2, "seed": 0}, "normalize": "global"},
            "line": {
                "source": {
                    "name": "csv",
                    "path": str(CSV_DIR / "line.csv"),
                    "features": ["x"],
                    "target": "y",
                    "task": "regression",
                },
                "split": "none",
                "normalize": "per_feature",
            },
        },
        "experiments": {
            "digits_mlp": {
                "dataset": "digits",
                "model": {"name": "mlp", "hidden_sizes": [16], "activation": "relu"},
                "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 2},
            },
            "line_linear": {
                "dataset": "line",
                "model": {"name": "linear"},
                "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 10, "epochs": 3},
            },
        },
    }


@pytest.fixture
def params_dict(tmp_path, monkeypatch) -> dict:
    """A fresh, editable copy of the tiny params tree (nothing written yet), with the test
    running in tmp_path, where its paths lead."""
    monkeypatch.chdir(tmp_path)
    return copy.deepcopy(tiny_params_dict())


@pytest.fixture
def tiny_params(tmp_path, params_dict) -> Params:
    """Validated tiny params with both datasets already normalized into paths.processed,
    as the normalize stage would leave them: ready for train, evaluate and plot."""
    params = parse_params(params_dict)
    store.save(prepare.prepare(digit_table(), 0.2, 0, "global"), params.paths.processed_dir("digits"))
    x = np.arange(10.0)
    y = np.array([1.0, 1.3, 3.1, 2.0, 5.0, 6.3, 6.6, 7.4, 8.0, 9.0])
    line = Table(x=x[:, None], y=y, task="regression", feature_names=["x"], target_name="y")
    store.save(prepare.prepare(line, None, 0, "per_feature"), params.paths.processed_dir("line"))
    return params
