import json

import numpy as np
import pytest

from torchrepro import evaluate, plot
from torchrepro.train import stage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

HISTORY = {
    "epoch": ["1", "2", "3"],
    "train_loss": ["1.0", "0.6", "0.4"],
    "test_loss": ["1.1", "0.8", "0.7"],
    "train_accuracy": ["0.5", "0.7", "0.8"],
    "test_accuracy": ["0.4", "0.6", "0.7"],
}
REGRESSION_HISTORY = {k: v for k, v in HISTORY.items() if "accuracy" not in k}
ACTUAL = ["0", "1", "2", "2", "1", "0"]
PREDICTED = ["0", "2", "2", "1", "1", "0"]
LINE = {"weight": 0.9, "bias": 0.5, "least_squares": {"weight": 0.95, "bias": 0.4}}


def draw(kind: str, out):
    """Each figure function on tiny inputs, saved as dvclive saves a figure."""
    if kind == "activations":
        plot.activations(out)
        return
    if kind == "learning_curves":
        fig = plot.learning_curves(HISTORY, "tiny")
    elif kind == "learning_curves_regression":
        fig = plot.learning_curves(REGRESSION_HISTORY, "tiny")
    elif kind == "confusion_heatmap":
        fig = plot.confusion_heatmap(ACTUAL, PREDICTED, ["0", "1", "2"], "tiny")
    elif kind == "misclassified_grid":
        images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28)).astype(np.uint8)
        fig = plot.misclassified_grid(images, ACTUAL, PREDICTED)
    elif kind == "regression_fit":
        fig = plot.regression_fit(np.arange(5.0), np.array([0.4, 1.5, 2.2, 3.3, 4.1]), LINE, ("x", "y"))
    fig.savefig(out)
    plot.plt.close(fig)


KINDS = [
    "learning_curves",
    "learning_curves_regression",
    "confusion_heatmap",
    "misclassified_grid",
    "regression_fit",
    "activations",
]


@pytest.mark.parametrize("kind", KINDS)
def test_figure_is_a_png_and_reproducible(tmp_path, kind):
    draw(kind, tmp_path / "a.png")
    draw(kind, tmp_path / "b.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 100 and height >= 100
    assert (tmp_path / "b.png").read_bytes() == data  # no timestamp in the file


def test_different_inputs_give_a_different_figure(tmp_path):
    plot.confusion_heatmap(ACTUAL, PREDICTED, ["0", "1", "2"], "tiny").savefig(tmp_path / "a.png")
    plot.confusion_heatmap(ACTUAL, ACTUAL, ["0", "1", "2"], "tiny").savefig(tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_no_mistakes_still_draws_a_grid(tmp_path):
    plot.misclassified_grid(np.zeros((2, 28, 28), np.uint8), ["1", "2"], ["1", "2"]).savefig(tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes().startswith(PNG_SIGNATURE)


def test_activations_creates_its_directory(tmp_path):
    plot.activations(tmp_path / "deep" / "er" / "act.png")
    assert (tmp_path / "deep" / "er" / "act.png").read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in (tmp_path / "deep" / "er").iterdir()] == ["act.png"]  # no temp file left


def test_read_csv_gives_columns(tmp_path):
    (tmp_path / "h.csv").write_text("epoch,loss\n1,0.5\n2,0.25\n")
    assert plot.read_csv(tmp_path / "h.csv") == {"epoch": ["1", "2"], "loss": ["0.5", "0.25"]}
    (tmp_path / "e.csv").write_text("epoch,loss\n")
    assert plot.read_csv(tmp_path / "e.csv") == {"epoch": [], "loss": []}  # the columns, with no rows
    (tmp_path / "n.csv").write_text("")
    assert plot.read_csv(tmp_path / "n.csv") == {}


def images(out) -> list[str]:
    return sorted(p.name for p in (out / "plots" / "images").iterdir())


def test_run_classification_figures(tiny_params):
    stage.run(tiny_params, "digits_mlp", progress=False)
    evaluate.run(tiny_params, "digits_mlp")
    plot.run(tiny_params, "digits_mlp")
    out = tiny_params.paths.plots_dir("digits_mlp")
    assert images(out) == ["confusion.png", "learning_curves.png", "misclassified.png"]
    for png in (out / "plots" / "images").iterdir():
        assert png.read_bytes().startswith(PNG_SIGNATURE), png.name
    # dvclive's confusion data for DVC's template: exactly the pairs evaluate predicted.
    pairs = json.loads((out / "plots" / "sklearn" / "confusion_matrix.json").read_text())
    lines = tiny_params.paths.predictions_file("digits_mlp").read_text().splitlines()[1:]
    assert [f"{p['actual']},{p['predicted']}" for p in pairs] == lines
    assert sorted(p.name for p in out.iterdir()) == ["plots"]  # no dvc.yaml, report or summary


def test_run_regression_figures(tiny_params):
    stage.run(tiny_params, "line_linear", progress=False)
    evaluate.run(tiny_params, "line_linear")
    plot.run(tiny_params, "line_linear")
    out = tiny_params.paths.plots_dir("line_linear")
    assert images(out) == ["fit.png", "learning_curves.png"]
    assert not (out / "plots" / "sklearn").exists()


def test_read_history_from_dvclive(tiny_params):
    stage.run(tiny_params, "digits_mlp", progress=False)
    history = plot.read_history(tiny_params.paths.train_live_dir("digits_mlp"))
    assert history["epoch"] == ["1", "2"]
    assert set(history) == {"epoch", "train_loss", "test_loss", "train_accuracy", "test_accuracy"}
