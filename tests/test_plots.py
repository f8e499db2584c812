import numpy as np
import pytest

from torchrepro import evaluate, plots, train

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
    """Each figure function on tiny inputs."""
    if kind == "learning_curves":
        plots.learning_curves(HISTORY, out, "tiny")
    elif kind == "learning_curves_regression":
        plots.learning_curves(REGRESSION_HISTORY, out, "tiny")
    elif kind == "confusion_heatmap":
        plots.confusion_heatmap(ACTUAL, PREDICTED, ["0", "1", "2"], out, "tiny")
    elif kind == "misclassified_grid":
        images = np.random.default_rng(0).integers(0, 256, size=(6, 28, 28)).astype(np.uint8)
        plots.misclassified_grid(images, ACTUAL, PREDICTED, out)
    elif kind == "regression_fit":
        plots.regression_fit(np.arange(5.0), np.array([0.4, 1.5, 2.2, 3.3, 4.1]), LINE, out, ("x", "y"))
    elif kind == "activations":
        plots.activations(out)


KINDS = ["learning_curves", "learning_curves_regression", "confusion_heatmap", "misclassified_grid",
         "regression_fit", "activations"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_figure_is_a_png_and_reproducible(tmp_path, kind):
    draw(kind, tmp_path / "a.png")
    draw(kind, tmp_path / "b.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 100 and height >= 100
    assert (tmp_path / "b.png").read_bytes() == data  # no timestamp or version in the file


def test_different_inputs_give_a_different_figure(tmp_path):
    plots.confusion_heatmap(ACTUAL, PREDICTED, ["0", "1", "2"], tmp_path / "a.png", "tiny")
    plots.confusion_heatmap(ACTUAL, ACTUAL, ["0", "1", "2"], tmp_path / "b.png", "tiny")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


def test_no_mistakes_still_draws_a_grid(tmp_path):
    plots.misclassified_grid(np.zeros((2, 28, 28), np.uint8), ["1", "2"], ["1", "2"], tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes().startswith(PNG_SIGNATURE)


def test_activations_creates_its_directory(tmp_path):
    plots.activations(tmp_path / "deep" / "er" / "act.png")
    assert (tmp_path / "deep" / "er" / "act.png").read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in (tmp_path / "deep" / "er").iterdir()] == ["act.png"]  # no temp file left


def test_read_csv_gives_columns(tmp_path):
    (tmp_path / "h.csv").write_text("epoch,loss\n1,0.5\n2,0.25\n")
    assert plots.read_csv(tmp_path / "h.csv") == {"epoch": ["1", "2"], "loss": ["0.5", "0.25"]}
    (tmp_path / "e.csv").write_text("epoch,loss\n")
    assert plots.read_csv(tmp_path / "e.csv") == {}


def test_run_classification_figures(tiny_params):
    train.run(tiny_params, "digits_mlp", progress=False)
    evaluate.run(tiny_params, "digits_mlp")
    plots.run(tiny_params, "digits_mlp")
    out = tiny_params.paths.plots_dir("digits_mlp")
    assert sorted(p.name for p in out.iterdir()) == ["confusion.csv", "confusion.png", "learning_curves.png",
                                                      "misclassified.png"]  # fmt: skip
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(PNG_SIGNATURE), png.name
    # The confusion pairs DVC plots are exactly the predictions evaluate wrote.
    predictions = tiny_params.paths.predictions_file("digits_mlp").read_text()
    assert (out / "confusion.csv").read_text() == predictions


def test_run_regression_figures(tiny_params):
    train.run(tiny_params, "line_linear", progress=False)
    evaluate.run(tiny_params, "line_linear")
    plots.run(tiny_params, "line_linear")
    out = tiny_params.paths.plots_dir("line_linear")
    assert sorted(p.name for p in out.iterdir()) == ["fit.png", "learning_curves.png"]
