"""The plot stage: an experiment's figures with matplotlib (no torch).

plots/<experiment>/plots/images/: learning curves, and a confusion-matrix heatmap and
misclassified digits (classification) or the fitted line (regression); for classification
also plots/<experiment>/plots/sklearn/confusion_matrix.json, drawn by DVC's confusion
template. The layout and the bytes are those of dvclive's log_image and log_sklearn_plot;
the stage writes them itself, as evaluate writes its metrics: opening dvclive would double
the stage's start-up. `activations` draws the activation functions the models offer.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from torchrepro.core.errors import DataError
from torchrepro.core.io import atomic_dir, atomic_path, read_json
from torchrepro.core.params import Params
from torchrepro.normalize import store

PNG = {"dpi": 100, "metadata": {"Software": None}}  # no version stamp: same figure, same bytes


def read_csv(path: str | Path, delimiter: str = ",", columns: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """A small CSV (or TSV) as columns of strings; an empty file has none. The named `columns`
    must be there, and every row must have the header's fields."""
    hint = "run the stages before plot (dvc repro)"
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f, delimiter=delimiter, strict=True) if row]
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {hint}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a table; {hint}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable table ({error}); {hint}") from None
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {number} has {len(row)} fields, the header {len(header)}; {hint}")
    if missing := [c for c in columns if c not in header]:
        raise DataError(f"{path}: no column {', '.join(missing)} (has: {', '.join(header) or 'nothing'}); {hint}")
    return {name: [row[i] for row in body] for i, name in enumerate(header)}


def read_history(live_dir: Path) -> dict[str, list[str]]:
    """The per-epoch metrics dvclive wrote during training, as columns epoch, train_loss, ..."""
    history: dict[str, list[str]] = {}
    for split in ("train", "test"):
        for metric in ("loss", "accuracy"):
            path = live_dir / "plots" / "metrics" / split / f"{metric}.tsv"
            if metric == "accuracy" and not path.exists():
                continue  # regression: loss only
            columns = read_csv(path, delimiter="\t", columns=("step", metric))
            _check_numbers(path, columns["step"], int)
            _check_numbers(path, columns[metric], float)
            if "epoch" in history and columns["step"] != history["epoch"]:
                raise DataError(f"{path}: its steps differ from the other files' in {live_dir}; rerun the train stage")
            history["epoch"] = columns["step"]
            history[f"{split}_{metric}"] = columns[metric]
    return history


def _check_numbers(path: Path, values: list[str], kind: type) -> None:
    for number, value in enumerate(values, start=2):
        try:
            kind(value)
        except ValueError:
            raise DataError(f"{path}: row {number}: {value!r} is not a number; rerun the train stage") from None


def learning_curves(history: dict[str, list[str]], title: str) -> plt.Figure:
    """Loss (and accuracy, for classification) per epoch, train against test."""
    epochs = np.asarray(history["epoch"], dtype=int)
    panels = ["loss"] + (["accuracy"] if "train_accuracy" in history else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        for split in ("train", "test"):
            ax.plot(epochs, np.asarray(history[f"{split}_{metric}"], dtype=float), marker=".", label=split)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_heatmap(actual: list[str], predicted: list[str], classes: list[str], title: str) -> plt.Figure:
    """Counts of (true, predicted) pairs; the diagonal is what the model got right."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(counts, ([index[a] for a in actual], [index[p] for p in predicted]), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if n > counts.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="actual", title=title)
    ax.set_xticklabels(classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticklabels(classes)
    fig.tight_layout()
    return fig


def misclassified_grid(
    images: np.ndarray, actual: list[str], predicted: list[str], limit: int = 36, digits: bool = True
) -> plt.Figure:
    """Up to `limit` test images (pixels 0-255, (N, H, W) grayscale or (N, H, W, 3) RGB) the
    model got wrong, each labelled 'true→predicted'. One tiled image on one axes: 36 subplots
    would take matplotlib half a second to lay out. Digits are drawn as ink on paper (light
    pixels dark), other images as they are, on white."""
    wrong = [i for i, (a, p) in enumerate(zip(actual, predicted)) if a != p][:limit]
    cols, (h, w) = 6, images.shape[1:3]
    rows = max(1, -(-len(wrong) // cols))
    cell_h, cell_w = h + h // 2, w + w // 4  # room for the label above each image
    canvas = np.full((rows * cell_h, cols * cell_w, *images.shape[3:]), 0.0 if digits else 255.0)
    fig, ax = plt.subplots(figsize=(cols * 1.3, rows * 1.5))
    for n, i in enumerate(wrong):
        top, left = (n // cols) * cell_h + h // 2, (n % cols) * cell_w
        canvas[top : top + h, left : left + w] = images[i]
        ax.text(
            left + w / 2, top - 1, f"{actual[i]}→{predicted[i]}", ha="center", va="bottom", fontsize=9, color="crimson"
        )
    if canvas.ndim == 3:  # RGB
        ax.imshow(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    else:
        ax.imshow(canvas, cmap="gray_r" if digits else "gray", vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title(f"misclassified: {len(wrong)} shown, {sum(a != p for a, p in zip(actual, predicted))} in all")
    fig.tight_layout()
    return fig


def regression_fit(x: np.ndarray, y: np.ndarray, metrics: dict[str, Any], labels: tuple[str, str]) -> plt.Figure:
    """Data points with the learned line and the least-squares line, in the CSV's units."""
    grid = np.linspace(x.min(), x.max(), 100)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(x, y, color="black", zorder=3, label="data")
    learned, exact = metrics, metrics["least_squares"]
    ax.plot(
        grid,
        learned["weight"] * grid + learned["bias"],
        label=f"SGD: y = {learned['weight']:.4g}x + {learned['bias']:.4g}",
    )
    ax.plot(
        grid,
        exact["weight"] * grid + exact["bias"],
        "--",
        label=f"least squares: y = {exact['weight']:.4g}x + {exact['bias']:.4g}",
    )
    ax.set(xlabel=labels[0], ylabel=labels[1], title="learned line against the optimum")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def activations(out: Path) -> None:
    """The activation functions the models offer on z in [-5, 5], and softmax of a small vector."""
    z = np.linspace(-5, 5, 201)
    vector = np.array([2.0, 1.0, 0.1, -1.0])
    soft = np.exp(vector - vector.max())
    soft /= soft.sum()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(z, 1 / (1 + np.exp(-z)), label="logistic sigmoid")
    left.plot(z, np.tanh(z), label="tanh")
    left.plot(z, np.maximum(z, 0), label="ReLU")
    left.set(xlabel="z", ylabel="activation", ylim=(-1.2, 5.2), title="activation functions")
    left.grid(alpha=0.3)
    left.legend()
    right.bar([f"z={v:g}" for v in vector], soft)
    for i, p in enumerate(soft):
        right.text(i, p, f"{p:.3f}", ha="center", va="bottom")
    right.set(ylabel="probability", title=f"softmax({', '.join(f'{v:g}' for v in vector)})")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", **PNG)
    plt.close(fig)


def read_metrics(path: Path, stage: str) -> dict[str, Any]:
    """evaluate's metrics.json; the numbers the regression fit draws must be numbers."""
    try:
        metrics = read_json(path, f"rerun `dvc repro {stage}`")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `dvc repro {stage}`") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: not the metrics evaluate writes; rerun `dvc repro {stage}`")
    if "weight" in metrics:  # a linear regression: its line and the least-squares line are drawn
        exact = metrics.get("least_squares") if isinstance(metrics.get("least_squares"), dict) else {}
        if not all(
            _is_number(v) for v in (metrics["weight"], metrics.get("bias"), exact.get("weight"), exact.get("bias"))
        ):
            raise DataError(f"{path}: weight, bias or least_squares is not numbers; rerun `dvc repro {stage}`")
    return metrics


def _is_number(value: Any) -> bool:
    """A finite number, or a list of them (a weight per feature)."""
    if isinstance(value, list):
        return bool(value) and all(map(_is_number, value))
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def run(params: Params, experiment: str) -> None:
    """Write plots/<experiment>/ from the training history, the predictions and the metrics."""
    exp = params.experiment(experiment)
    paths = params.paths
    history = read_history(paths.train_live_dir(experiment))
    predictions_file = paths.predictions_file(experiment)
    predictions = read_csv(predictions_file, columns=("actual", "predicted"))
    metrics = read_metrics(paths.evaluate_live_dir(experiment) / "metrics.json", f"evaluate@{experiment}")
    # Classifier figures need only the test split (60,000 training images would be 188 MB);
    # the regression fit draws the training points. Only classification histories have accuracy.
    data = store.load(paths.processed_dir(exp.dataset), train="train_accuracy" not in history)
    meta = data.meta
    rerun = f"rerun `dvc repro evaluate@{experiment}`"
    if len(predictions["actual"]) != len(data.y_test):
        raise DataError(
            f"{predictions_file}: {len(predictions['actual'])} rows for {len(data.y_test)} test examples; {rerun}"
        )
    if meta["task"] == "classification":
        for column in ("actual", "predicted"):
            if unknown := set(predictions[column]) - set(meta["classes"]):
                raise DataError(
                    f"{predictions_file}: {column}: {sorted(unknown)[0]!r} is not a class of {exp.dataset}; {rerun}"
                )
    with atomic_dir(paths.plots_dir(experiment)) as out:
        figures = {"learning_curves.png": learning_curves(history, experiment)}
        if meta["task"] == "classification":
            actual, predicted = predictions["actual"], predictions["predicted"]
            figures["confusion.png"] = confusion_heatmap(actual, predicted, meta["classes"], experiment)
            confusion_pairs(out / "plots" / "sklearn" / "confusion_matrix.json", actual, predicted)
            if meta["kind"] == "image":
                pixels = data.x_test  # uint8 (N, C, H, W), as stored
                pixels = pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)  # (N, H, W[, 3])
                digits = "pixels" not in meta["normalize"]  # an image folder's images are not MNIST digits
                figures["misclassified.png"] = misclassified_grid(pixels, actual, predicted, digits=digits)
        elif "weight" in metrics and len(meta["feature_names"]) == 1:
            # The points the line was fitted to, back in the CSV's units.
            x = store.unapply(data.x_train, meta)[:, 0]
            figures["fit.png"] = regression_fit(x, data.y_train, metrics, (meta["feature_names"][0], meta["target"]))
        (out / "plots" / "images").mkdir(parents=True)
        for name, fig in figures.items():
            fig.savefig(out / "plots" / "images" / name)  # matplotlib's defaults, as dvclive saves a figure
            plt.close(fig)


def confusion_pairs(path: Path, actual: list[str], predicted: list[str]) -> None:
    """DVC's confusion template's data: one {"actual", "predicted"} record per prediction,
    written as dvclive's log_sklearn_plot("confusion_matrix") writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"actual": str(a), "predicted": str(p)} for a, p in zip(actual, predicted)], f, indent=4)
        f.write("\n")
