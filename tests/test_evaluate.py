import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from torchrepro import evaluate
from torchrepro.core.errors import DataError
from torchrepro.core.params import Train, parse_params
from torchrepro.download.sources import Table
from torchrepro.models.inference import Split, predict
from torchrepro.models.nets import create_model
from torchrepro.normalize import prepare, store
from torchrepro.optim import make_optimizer
from torchrepro.train import stage
from torchrepro.train.loop import Trainer, fit, seed_everything

from test_fuzz import run_entry, snapshot

LINE10_Y = [1.0, 1.3, 3.1, 2.0, 5.0, 6.3, 6.6, 7.4, 8.0, 9.0]


def exact_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The least-squares line by the textbook formulas: slope = cov(x, y) / var(x)."""
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    return slope, y.mean() - slope * x.mean()


# --- classification -----------------------------------------------------------------------


def test_classification_metrics_by_hand():
    #            true: a a b b c c
    #       predicted: a b b b c a
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    metrics = evaluate.classification_metrics(y_true, y_pred, loss=0.25, classes=["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["loss"] == 0.25 and metrics["n_test"] == 6
    per_class = metrics["per_class"]
    # a: predicted twice, right once; 2 true a's, 1 found.
    assert per_class["a"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2}, abs=1e-6)
    # b: predicted 3 times, right twice; both true b's found. F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    assert per_class["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}, abs=1e-6)
    # c: predicted once, right; 1 of 2 true c's found. F1 = 2 * 0.5 / 1.5
    assert per_class["c"] == pytest.approx({"precision": 1.0, "recall": 1 / 2, "f1": 2 / 3, "support": 2}, abs=1e-6)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3, abs=1e-6)
    assert list(per_class) == ["a", "b", "c"]


def test_never_predicted_and_absent_classes_score_zero():
    metrics = evaluate.classification_metrics(np.array([0, 0, 1]), np.array([0, 0, 0]), 0.0, ["x", "y", "z"])
    assert metrics["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["per_class"]["z"]["support"] == 0
    assert metrics["per_class"]["x"]["precision"] == pytest.approx(2 / 3, abs=1e-6)


def test_metrics_are_rounded_for_stable_diffs():
    metrics = evaluate.classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), 1 / 3, ["p", "q"])
    assert metrics["loss"] == 0.333333 and metrics["accuracy"] == 0.666667


# --- regression ---------------------------------------------------------------------------


def test_original_units_by_hand():
    # Learned on z = (x - mean) / std: f = 2 z0 - 3 z1 + 1 with mean (10, 5), std (2, 0.5).
    # f = (x0 - 10) - 6 (x1 - 5) + 1 = x0 - 6 x1 + 21.
    weight, bias = evaluate.original_units(np.array([2.0, -3.0]), 1.0, np.array([10.0, 5.0]), np.array([2.0, 0.5]))
    np.testing.assert_allclose(weight, [1.0, -6.0])
    assert bias == pytest.approx(21.0)


def test_least_squares_on_line5_by_hand():
    # x = 1..5, y = 15 20 34 42 58: mean x 3, mean y 33.8, Sxy 108, Sxx 10 -> y = 10.8 x + 1.4.
    # Residuals 2.8 -3 0.2 -2.6 2.6: SSE 30.4, MSE 6.08; SST 1196.8.
    x = np.arange(1.0, 6.0)[:, None]
    y = np.array([15.0, 20, 34, 42, 58])
    pred = 10.8 * x[:, 0] + 1.4
    metrics = evaluate.regression_metrics(x, y, x, y, pred, (np.array([10.8]), 1.4))
    exact = metrics["least_squares"]
    assert exact["weight"] == pytest.approx(10.8, abs=1e-6) and exact["bias"] == pytest.approx(1.4, abs=1e-6)
    assert exact["mse"] == pytest.approx(6.08, abs=1e-6) and metrics["mse"] == pytest.approx(6.08, abs=1e-6)
    assert metrics["r2"] == pytest.approx(1 - 30.4 / 1196.8, abs=1e-6)
    assert metrics["gap"] == pytest.approx({"mse": 0.0, "weight": 0.0, "bias": 0.0}, abs=1e-6)
    assert metrics["weight"] == pytest.approx(10.8) and metrics["bias"] == pytest.approx(1.4)
    assert metrics["n_test"] == 5


def test_regression_metrics_of_a_worse_model():
    x = np.arange(1.0, 6.0)[:, None]
    y = np.array([15.0, 20, 34, 42, 58])
    mean_only = np.full(5, 33.8)  # predicting the mean: R² = 0, MSE = SST / n
    metrics = evaluate.regression_metrics(x, y, x, y, mean_only, (np.array([0.0]), 33.8))
    assert metrics["r2"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["mse"] == pytest.approx(1196.8 / 5, abs=1e-6)
    assert metrics["gap"]["mse"] == pytest.approx(1196.8 / 5 - 6.08, abs=1e-5)
    assert metrics["gap"]["weight"] == pytest.approx(10.8, abs=1e-6)
    assert metrics["gap"]["bias"] == pytest.approx(33.8 - 1.4, abs=1e-6)


def test_least_squares_matches_the_closed_form_on_several_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = x @ [1.5, -2.0, 0.5] + 4 + rng.normal(scale=0.1, size=30)
    design = np.column_stack([x, np.ones(30)])
    solution = np.linalg.solve(design.T @ design, design.T @ y)  # normal equations
    metrics = evaluate.regression_metrics(x, y, x, y, design @ solution, (solution[:3], solution[3]))
    np.testing.assert_allclose(metrics["least_squares"]["weight"], solution[:3], atol=1e-6)
    assert metrics["least_squares"]["bias"] == pytest.approx(solution[3], abs=1e-6)
    assert isinstance(metrics["weight"], list) and len(metrics["weight"]) == 3


def test_no_weights_for_a_non_linear_model():
    x = np.arange(4.0)[:, None]
    metrics = evaluate.regression_metrics(x, x[:, 0], x, x[:, 0], x[:, 0], None)
    assert "weight" not in metrics and "weight" not in metrics["least_squares"]
    assert evaluate.linear_layer(create_model("mlp", [1], 1, hidden_sizes=[4])) is None
    assert evaluate.linear_layer(create_model("linear", [1], 2)) is None  # two outputs


def test_least_squares_through_the_origin_on_line5_by_hand():
    # y = a x: a = sum(xy) / sum(x²) = (15 + 40 + 102 + 168 + 290) / 55 = 615 / 55.
    x = np.arange(1.0, 6.0)[:, None]
    y = np.array([15.0, 20, 34, 42, 58])
    a = 615 / 55
    metrics = evaluate.regression_metrics(x, y, x, y, a * x[:, 0], (np.array([a]), 0.0), intercept=False)
    exact = metrics["least_squares"]
    assert exact["intercept"] is False and exact["bias"] == 0.0
    assert exact["weight"] == pytest.approx(11.181818, abs=1e-6)
    assert exact["mse"] == pytest.approx(np.mean((y - a * x[:, 0]) ** 2), abs=1e-5)
    assert metrics["gap"] == pytest.approx({"mse": 0.0, "weight": 0.0, "bias": 0.0}, abs=1e-6)


def test_weights_are_reported_in_raw_units(regression):
    """A model on standardized x, y = w z + b, is y = (w / std) x + (b - w mean / std) in raw x."""
    x = regression.x
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    w, b = evaluate.least_squares(z, regression.y)
    metrics = evaluate.regression_metrics(z, regression.y, z, regression.y, z @ w + b, (w, b), norm=(mean, std))
    raw_w, raw_b = evaluate.least_squares(x, regression.y)
    np.testing.assert_allclose(metrics["weight"], raw_w, atol=1e-5)
    assert metrics["bias"] == pytest.approx(raw_b, abs=1e-5)
    np.testing.assert_allclose(metrics["least_squares"]["weight"], raw_w, atol=1e-5)


def test_linear_regression_on_line10_converges_to_least_squares():
    x = np.arange(10.0)
    y = np.array(LINE10_Y)
    slope, intercept = exact_line(x, y)
    table = Table(x=x[:, None], y=y, task="regression", feature_names=["x"], target_name="y")
    data = prepare.prepare(table, None, 0, "global")  # x standardized, y as is

    seed_everything(0)
    model = create_model("linear", [1], 1)
    cfg = Train(optimizer="sgd", lr=0.1, batch_size=10, epochs=300)  # full-batch gradient descent
    device = torch.device("cpu")
    trainer = Trainer(
        model,
        make_optimizer(model.parameters(), cfg, device),
        Split.from_numpy(data.x_train, data.y_train, device),
        Split.from_numpy(data.x_test, data.y_test, device),
        "regression",
        cfg.batch_size,
        seed=0,
    )
    fit(trainer, cfg.epochs, progress=False)

    norm = (np.asarray(data.meta["normalize"]["mean"]), np.asarray(data.meta["normalize"]["std"]))
    weight, bias = evaluate.original_units(*evaluate.linear_weights(evaluate.linear_layer(model)), *norm)
    assert weight[0] == pytest.approx(slope, abs=1e-3)
    assert bias == pytest.approx(intercept, abs=1e-3)
    pred = predict(model, torch.from_numpy(data.x_test))[:, 0].double().numpy()
    metrics = evaluate.regression_metrics(x[:, None], y, x[:, None], y, pred, (weight, bias))
    assert metrics["least_squares"]["weight"] == pytest.approx(slope, abs=1e-6)
    assert metrics["least_squares"]["bias"] == pytest.approx(intercept, abs=1e-6)
    assert metrics["gap"]["weight"] < 1e-3 and metrics["gap"]["bias"] < 1e-3 and metrics["gap"]["mse"] < 1e-5


# --- the stage function ---------------------------------------------------------------------


def test_run_classification(tiny_params):
    stage.run(tiny_params, "digits_mlp", progress=False)
    metrics = evaluate.run(tiny_params, "digits_mlp")
    paths = tiny_params.paths
    assert json.loads((paths.evaluate_live_dir("digits_mlp") / "metrics.json").read_text()) == metrics
    assert metrics["n_test"] == 12 and set(metrics["per_class"]) == {str(i) for i in range(10)}
    lines = paths.predictions_file("digits_mlp").read_text().splitlines()
    assert lines[0] == "actual,predicted" and len(lines) == 13
    actual = [line.split(",")[0] for line in lines[1:]]
    predicted = [line.split(",")[1] for line in lines[1:]]
    y_test = store.load(paths.processed_dir("digits")).y_test
    assert actual == [str(c) for c in y_test]
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(actual) == np.array(predicted)), abs=1e-6)


def test_class_names_with_slashes_stay_whole_in_the_summary(tmp_path):
    """dvclive splits metric names at slashes; Fashion-MNIST has a class "T-shirt/top"."""
    metrics = evaluate.classification_metrics(np.array([0, 1]), np.array([0, 0]), 0.5, ["T-shirt/top", "Trouser"])
    evaluate.log_summary(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())["per_class"]["T-shirt/top"]["recall"] == 1.0


def test_run_regression_reports_raw_unit_weights(tiny_params):
    stage.run(tiny_params, "line_linear", progress=False)
    metrics = evaluate.run(tiny_params, "line_linear")
    slope, intercept = exact_line(np.arange(10.0), np.array(LINE10_Y))
    assert metrics["least_squares"]["weight"] == pytest.approx(slope, abs=1e-6)
    assert metrics["least_squares"]["bias"] == pytest.approx(intercept, abs=1e-6)
    assert metrics["gap"]["weight"] == pytest.approx(abs(metrics["weight"] - slope), abs=2e-6)
    lines = tiny_params.paths.predictions_file("line_linear").read_text().splitlines()
    assert lines[0] == "actual,predicted" and [float(line.split(",")[0]) for line in lines[1:]] == LINE10_Y


def test_run_without_a_trained_model(tiny_params):
    with pytest.raises(
        DataError, match=r"experiment 'digits_mlp' has not been trained yet .*train it with: dvc repro train@digits_mlp"
    ):
        evaluate.run(tiny_params, "digits_mlp")


# --- agreement with scikit-learn, the reference implementation -----------------------------


@pytest.mark.parametrize("seed", range(3))
def test_per_class_scores_match_scikit_learn(seed):
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 6, 200), rng.integers(0, 5, 200)  # class 5 is never predicted
    ours = evaluate.per_class_scores(y_true, y_pred, 7)  # class 6 is absent from both
    theirs = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(7), zero_division=0)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_regression_metrics_match_scikit_learn():
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (40, 3))
    y = x @ np.array([2.0, -1.0, 0.5]) + 4 + rng.normal(0, 1, 40)
    pred = y + rng.normal(0, 2, 40)
    weight, bias = evaluate.least_squares(x, y)
    exact = LinearRegression().fit(x, y)
    np.testing.assert_allclose(weight, exact.coef_, rtol=1e-10)
    assert bias == pytest.approx(exact.intercept_, rel=1e-10)
    assert evaluate.mse(y, pred) == pytest.approx(mean_squared_error(y, pred), rel=1e-12)
    assert evaluate.r2(y, pred) == pytest.approx(r2_score(y, pred), rel=1e-12)
    assert evaluate.r2(np.ones(3), np.ones(3)) == r2_score(np.ones(3), np.ones(3)) == 1.0
    assert evaluate.r2(np.ones(3), np.zeros(3)) == r2_score(np.ones(3), np.zeros(3)) == 0.0


def test_run_on_a_model_without_bias_compares_with_the_fit_through_the_origin(tiny_params, params_dict):
    params_dict["datasets"]["line"]["normalize"] = "none"
    params_dict["experiments"]["line_origin"] = {
        "dataset": "line",
        "model": {"name": "linear", "bias": False},
        "train": {"optimizer": "sgd", "lr": 0.01, "batch_size": 10, "epochs": 50},
    }
    params = parse_params(params_dict)
    x, y = np.arange(10.0), np.array(LINE10_Y)
    table = Table(x=x[:, None], y=y, task="regression", feature_names=["x"], target_name="y")
    store.save(prepare.prepare(table, None, 0, "none"), params.paths.processed_dir("line"))
    stage.run(params, "line_origin", progress=False)
    metrics = evaluate.run(params, "line_origin")
    assert metrics["least_squares"]["intercept"] is False and metrics["bias"] == 0.0
    assert metrics["least_squares"]["weight"] == pytest.approx(np.sum(x * y) / np.sum(x * x), abs=1e-6)
    assert metrics["gap"]["weight"] < 1e-3  # 50 full-batch steps reach it


# --- a damaged model.json, at the stage's command line --------------------------------------


def flip_first_mean(info: dict) -> None:
    info["normalize"]["mean"][0] += 2**-40  # one low bit of the float: another normalization


@pytest.mark.parametrize(
    "edit, says",
    [
        (flip_first_mean, "model.json: its json_sha256 does not match its content: the file is damaged"),
        (lambda info: info.pop("json_sha256"), "model.json: no json_sha256 digest: written by an older torchrepro"),
    ],
    ids=["flipped-bit", "older-format"],
)
def test_a_damaged_or_older_model_json_is_one_error(tiny_params, params_dict, tmp_path, edit, says):
    """The stage stops with one line naming the file and the command that rewrites it; the
    metrics and predictions are not written."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    stage.run(tiny_params, "line_linear", progress=False)
    info_path = tiny_params.paths.model_dir("line_linear") / "model.json"
    info = json.loads(info_path.read_text())
    edit(info)
    info_path.write_text(json.dumps(info))
    before = snapshot(tmp_path)
    outcome = run_entry(["stages/evaluate.py", "line_linear", "--params", str(tmp_path / "params.yaml")], tmp_path)
    assert outcome.escaped is None, outcome.escaped
    assert outcome.code == 2 and outcome.out == "" and outcome.warned == []
    [line] = outcome.err.splitlines()
    assert line.startswith(f"error: {info_path}: ") and says in line and "dvc repro train@line_linear" in line
    assert snapshot(tmp_path) == before


def test_a_failed_metrics_write_leaves_the_previous_metrics(tiny_params, monkeypatch):
    """A write that fails half-way (a full disk) leaves neither half a file nor a temp file:
    the previous metrics stay as they were."""
    stage.run(tiny_params, "line_linear", progress=False)
    evaluate.run(tiny_params, "line_linear")
    folder = tiny_params.paths.evaluate_live_dir("line_linear")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write_bytes = Path.write_bytes

    def half_written(path, data):
        write_bytes(path, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_written)
    with pytest.raises(OSError):
        evaluate.run(tiny_params, "line_linear")
    monkeypatch.setattr(Path, "write_bytes", write_bytes)  # undo() would also undo the chdir
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
