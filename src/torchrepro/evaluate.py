"""The evaluate stage: a trained model on its test split. The summary goes to
metrics/<experiment>/evaluate/metrics.json (dvclive's format); predictions/<experiment>.csv holds the
(actual, predicted) pairs behind it. Metrics are computed with numpy: no scikit-learn
import (1.2 s) in every evaluate stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrepro.core import determinism
from torchrepro.core.devices import resolve_device
from torchrepro.core.io import rounded, write_text
from torchrepro.core.params import Params
from torchrepro.models.checkpoint import load_model
from torchrepro.models.inference import Split, loss_fn, predict
from torchrepro.normalize import store

DECIMALS = 6  # metrics are rounded so `dvc metrics diff` shows changes, not float noise


def _round(value: float) -> float:
    return rounded(value, DECIMALS, significant=False)


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Precision, recall, F1 and support of each class label 0..n-1; 0 where a ratio is 0/0.
    The same numbers as scikit-learn's precision_recall_fscore_support(zero_division=0),
    without its 1.2 s import in every evaluate stage."""
    true_pos = np.bincount(y_true[y_true == y_pred], minlength=n_classes).astype(np.float64)
    predicted = np.bincount(y_pred, minlength=n_classes)
    support = np.bincount(y_true, minlength=n_classes)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)

    precision, recall = ratio(true_pos, predicted), ratio(true_pos, support)
    f1 = ratio(2 * true_pos, predicted + support)  # = 2PR / (P + R), and 0 when both are 0
    return precision, recall, f1, support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, loss: float, classes: list[str]) -> dict[str, Any]:
    """Accuracy, loss and per-class precision/recall/F1, with class names as keys."""
    precision, recall, f1, support = per_class_scores(y_true, y_pred, len(classes))
    per_class = {
        name: {"precision": _round(p), "recall": _round(r), "f1": _round(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    return {
        "accuracy": _round(np.mean(y_true == y_pred)),
        "loss": _round(loss),
        "n_test": int(len(y_true)),
        "macro_f1": _round(np.mean(f1)),
        "per_class": per_class,
    }


def original_units(weight: np.ndarray, bias: float, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, float]:
    """A linear map learned on standardized x, (x - mean) / std, rewritten for raw x."""
    w = weight / std
    return w, float(bias - np.sum(w * mean))


def least_squares(x: np.ndarray, y: np.ndarray, intercept: bool = True) -> tuple[np.ndarray, float]:
    """The exact ordinary-least-squares weight and bias of y ~ x @ w + b (b = 0 without intercept:
    the line through the origin, w = sum(xy) / sum(x²) for one feature)."""
    design = np.column_stack([x, np.ones(len(x))]) if intercept else x
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    return (solution[:-1], float(solution[-1])) if intercept else (solution, 0.0)


def mse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean((y - pred) ** 2))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination. A constant target scores 1 when predicted exactly, else 0
    (scikit-learn's convention), instead of dividing by zero."""
    residual, total = np.sum((y - pred) ** 2), np.sum((y - y.mean()) ** 2)
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return float(1 - residual / total)


def regression_metrics(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    pred: np.ndarray,
    linear: tuple[np.ndarray, float] | None,
    intercept: bool = True,
    norm: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """MSE and R² of the model, and of the exact least-squares fit of the same family (with an
    intercept, or through the origin for a model without bias) on the same inputs; for a linear
    model also its weight and bias and the gap to the optimum. x is what the model takes; with
    `norm` (the normalization's mean and std) weights are reported in the data's raw units."""
    exact_weight, exact_bias = least_squares(x_train, y_train, intercept)
    exact_pred = x_test @ exact_weight + exact_bias
    metrics: dict[str, Any] = {
        "mse": _round(mse(y_test, pred)),
        "r2": _round(r2(y_test, pred)),
        "n_test": int(len(y_test)),
        "least_squares": {
            "mse": _round(mse(y_test, exact_pred)),
            "r2": _round(r2(y_test, exact_pred)),
            "intercept": intercept,
        },
    }
    metrics["gap"] = {"mse": _round(metrics["mse"] - metrics["least_squares"]["mse"])}
    if linear is not None:
        raw = (lambda w, b: original_units(w, b, *norm)) if norm is not None else (lambda w, b: (w, b))
        weight, bias = raw(*linear)
        exact_weight, exact_bias = raw(exact_weight, exact_bias)
        scalar = len(weight) == 1  # one feature: plain numbers read better in `dvc metrics show`
        as_metric = (lambda w: _round(w[0])) if scalar else (lambda w: [_round(v) for v in w])
        metrics |= {"weight": as_metric(weight), "bias": _round(bias)}
        metrics["least_squares"] |= {"weight": as_metric(exact_weight), "bias": _round(exact_bias)}
        metrics["gap"] |= {
            "weight": _round(np.max(np.abs(weight - exact_weight))),
            "bias": _round(abs(bias - exact_bias)),
        }
    return metrics


def linear_layer(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's one nn.Linear when the model is a single linear map with one output."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return layers[0] if len(layers) == 1 and layers[0].out_features == 1 else None


def linear_weights(layer: torch.nn.Linear) -> tuple[np.ndarray, float]:
    """Weight and bias of a one-output nn.Linear, as the model sees its inputs."""
    weight = layer.weight.detach().cpu().double().numpy()[0]
    bias = 0.0 if layer.bias is None else float(layer.bias.detach().cpu().double().numpy()[0])
    return weight, bias


def run(params: Params, experiment: str) -> dict[str, Any]:
    """Evaluate a trained experiment on its test split; writes the metrics and the predictions."""
    exp = params.experiment(experiment)
    key = f"experiments.{experiment}.device" if exp.device else "device"
    device = resolve_device(params.device_for(experiment), key=key)
    determinism.apply(params.determinism, device)
    paths = params.paths
    model, info = load_model(paths.model_dir(experiment), device, experiment)
    # The training split is only needed for the least-squares reference of a regression.
    data = store.load(paths.processed_dir(exp.dataset), train=info["task"] == "regression")
    test = Split.from_numpy(data.x_test, data.y_test, device, data.meta)
    out = predict(model, test)
    loss = loss_fn(info["task"])(out, torch.from_numpy(data.y_test).to(device)).item()
    if info["task"] == "classification":
        pred = out.argmax(1).cpu().numpy()
        metrics = classification_metrics(data.y_test, pred, loss, info["classes"])
        names = np.asarray(info["classes"])
        rows = [f"{a},{p}" for a, p in zip(names[data.y_test], names[pred])]
    else:
        pred = out.squeeze(1).cpu().double().numpy()
        norm = data.meta["normalize"]
        layer = linear_layer(model)
        metrics = regression_metrics(
            data.x_train.astype(np.float64),
            data.y_train.astype(np.float64),
            data.x_test.astype(np.float64),
            data.y_test.astype(np.float64),
            pred,
            linear_weights(layer) if layer is not None else None,
            intercept=layer is None or layer.bias is not None,
            norm=(np.asarray(norm["mean"]) / norm["scale"], np.asarray(norm["std"]) / norm["scale"]),
        )
        rows = [f"{a:.6g},{p:.6g}" for a, p in zip(data.y_test, pred)]
    write_text(paths.predictions_file(experiment), "\n".join(["actual,predicted", *rows]) + "\n")
    log_summary(paths.evaluate_live_dir(experiment), metrics)
    return metrics


def log_summary(directory, metrics: dict[str, Any]) -> None:
    """The metrics as `metrics.json`, in dvclive's summary format (4-space indent, keys in
    order, a trailing newline), which `dvc metrics` reads. One file written once needs no
    logger: opening dvclive would cost the stage a second (its import and DVC's repository)."""
    write_text(Path(directory) / "metrics.json", json.dumps(metrics, indent=4) + "\n")
