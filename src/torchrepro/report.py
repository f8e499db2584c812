"""The report stage: every experiment in params.yaml side by side.

  reports/summary.csv   one row per experiment: settings, headline metric, size
  reports/summary.md    the same table in markdown
  reports/headline.png  accuracy of the classifiers and MSE of the regressions, as bars

Settings come from params.yaml; numbers from metrics/<exp>/evaluate/metrics.json and
models/<exp>/model.json (parameters). Nothing that differs from host to host or run to run:
wall-clock seconds stay in logs/<exp>.json, which DVC does not track, so the report is the
same bytes wherever it is reproduced.
An experiment not yet trained or evaluated keeps its row with those cells empty.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from torchrepro.core.errors import DataError
from torchrepro.core.io import atomic_path, read_json, write_text
from torchrepro.core.params import Experiment, Params
from torchrepro.models.checkpoint import check_info

# plot.PNG's settings, not imported: plot imports the data store, which would become a dep of this stage.
PNG = {"dpi": 100, "metadata": {"Software": None}}  # no version stamp: same figure, same bytes
COLUMNS = [
    "experiment",
    "dataset",
    "model",
    "model_kwargs",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "accuracy",
    "mse",
    "n_parameters",
    "device",
]


def _read_json(path: Path, stage: str, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any] | None:
    """A JSON object, or None when the file does not exist yet; the `fields` the report reads
    must have their types when present. Errors name the file and the stage that rewrites it."""
    hint = f"rerun `dvc repro {stage}`"
    try:
        content = read_json(path, hint)
    except FileNotFoundError:
        return None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(content).__name__}; {hint}")
    for key, kind in fields.items():
        value = content.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise DataError(f"{path}: {key}: {value!r} is not what {stage} writes; {hint}")
    return content


def _compact(kwargs: dict[str, Any]) -> str:
    """{'hidden_sizes': [512, 256], 'activation': 'relu'} -> 'hidden_sizes=[512, 256] activation=relu'."""
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


def _optimizer(exp: Experiment) -> str:
    """The optimizer's name with its options and scheduler: 'sgd momentum=0.9', 'adadelta step'."""
    train = exp.train
    words = [train.optimizer, *(f"{k}={v}" for k, v in train.optimizer_options.items())]
    if train.scheduler is not None:
        words.append(train.scheduler.name)
    return " ".join(words)


def experiment_row(params: Params, name: str) -> dict[str, Any]:
    """One experiment's settings and results; results it does not have yet are None."""
    exp, paths = params.experiment(name), params.paths
    number = (int, float)
    metrics = _read_json(
        paths.evaluate_live_dir(name) / "metrics.json", f"evaluate@{name}", {"accuracy": number, "mse": number}
    )
    info = _read_json(paths.model_dir(name) / "model.json", f"train@{name}", {"n_parameters": int})
    if info is not None:  # its own digest too, as every reader of model.json checks it
        check_info(info, paths.model_dir(name) / "model.json", name)
    metrics, info = metrics or {}, info or {}
    return {
        "experiment": name,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "model_kwargs": _compact(exp.model.options),
        "optimizer": _optimizer(exp),
        "lr": exp.train.lr,
        "batch_size": exp.train.batch_size,
        "epochs": exp.train.epochs,
        "accuracy": metrics.get("accuracy"),  # classification
        "mse": metrics.get("mse"),  # regression
        "n_parameters": info.get("n_parameters"),
        "device": params.device_for(name),  # as set: the machine it ran on is the host's, not the result's
    }


def summary(params: Params) -> pd.DataFrame:
    """One row per experiment, in params.yaml's order."""
    frame = pd.DataFrame([experiment_row(params, name) for name in params.experiments], columns=COLUMNS)
    # Nullable integers: a missing parameter count stays empty instead of turning the column to float.
    return frame.astype({"batch_size": "Int64", "epochs": "Int64", "n_parameters": "Int64"})


def _cell(value: Any, column: str) -> str:
    if value is None or pd.isna(value):
        return ""
    if column == "n_parameters":
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}" if column != "lr" else f"{value:g}"
    return str(value).replace("|", "\\|")  # a pipe would split the markdown cell


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table; numbers right-aligned, empty cells for results not there yet.
    Written by hand: tabulate (pandas' to_markdown) is only a transitive dependency of dvc."""
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, c) for v, c in zip(row, frame.columns)) + " |")
    return "\n".join(lines) + "\n"


def headline_chart(frame: pd.DataFrame, out: Path) -> None:
    """Bars of accuracy (classifiers) and MSE (regressions) per experiment, one panel each."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [(m, frame.dropna(subset=[m])) for m in ("accuracy", "mse")]
    panels = [(m, rows) for m, rows in panels if len(rows)] or [("accuracy", frame.iloc[:0])]
    widths = [max(2, len(rows)) for _, rows in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.2 * sum(widths) + 2, 4), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for ax, (metric, rows) in zip(axes[0], panels):
        values = rows[metric].astype(float)
        bars = ax.bar(rows["experiment"], values, color="tab:blue" if metric == "accuracy" else "tab:orange")
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize=8)
        title = "classifiers: accuracy" if metric == "accuracy" else "regressions: MSE (lower is better)"
        ax.set(ylabel=metric, title=title)
        if metric == "accuracy":
            ax.set_ylim(0, 1.08)  # headroom for the labels
        else:
            ax.margins(y=0.12)
        if not len(rows):
            ax.text(0.5, 0.5, "no evaluated experiments yet", ha="center", va="center", transform=ax.transAxes)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", **PNG)
    plt.close(fig)


def run(params: Params) -> pd.DataFrame:
    """The report stage: write summary.csv, summary.md and headline.png under paths.reports."""
    frame = summary(params)
    out = Path(params.paths.reports)
    write_text(out / "summary.csv", frame.to_csv(index=False))
    title = "# Experiments\n\nWritten by `dvc repro report` from params.yaml, metrics and model.json files.\n\n"
    write_text(out / "summary.md", title + to_markdown(frame))
    headline_chart(frame, out / "headline.png")
    missing = frame.loc[frame["accuracy"].isna() & frame["mse"].isna(), "experiment"].tolist()
    if missing:
        print(f"report: no metrics yet for {', '.join(missing)}; run `dvc repro evaluate@NAME`", file=sys.stderr)
    return frame
