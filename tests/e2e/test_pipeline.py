"""`dvc repro` on the tiny params: what runs, what is reported, what a change invalidates."""

from __future__ import annotations

import re

import numpy as np
import pytest

EXPERIMENTS = ("iris_mlp", "linreg_line5")
CHAINS = {"iris_mlp": "iris", "linreg_line5": "line5"}  # experiment -> its dataset
PER_ITEM = {  # the foreach stages, by the dataset or experiment they were made for
    "iris": {"download@iris", "normalize@iris", "train@iris_mlp", "evaluate@iris_mlp", "plot@iris_mlp"},
    "line5": {"download@line5", "normalize@line5", "train@linreg_line5", "evaluate@linreg_line5", "plot@linreg_line5"},
}


TRAIN_METRICS = [  # dvclive's files for iris_mlp's training
    "metrics/iris_mlp/train/metrics.json",
    *(f"metrics/iris_mlp/train/plots/metrics/{s}/{m}.tsv" for s in ("train", "test") for m in ("loss", "accuracy")),
]


def per_item(stages) -> set[str]:
    """Only the foreach stages (`name@key`): single stages such as `activations` or an
    all-experiments summary may rightly depend on every experiment."""
    return {s for s in stages if "@" in s}


@pytest.fixture(scope="session")
def all_stages(reproduced) -> set[str]:
    names = set(reproduced.dvc("stage", "list", "--name-only").stdout.split())
    assert per_item(names) == PER_ITEM["iris"] | PER_ITEM["line5"]  # foreach over the tiny params
    return names


def test_repro_runs_every_stage_and_reports_both_experiments(reproduced, all_stages):
    assert reproduced.ran(reproduced.repro_output) == all_stages
    assert reproduced.dvc_json("status") == {}

    shown = reproduced.dvc_json("metrics", "show")[""]["data"]
    assert set(shown) == {f"metrics/{e}/{s}/metrics.json" for e in EXPERIMENTS for s in ("train", "evaluate")}
    for experiment in EXPERIMENTS:  # what DVC reports is what dvclive wrote for evaluate
        rel = f"metrics/{experiment}/evaluate/metrics.json"
        assert shown[rel]["data"] == reproduced.read_json(rel)
        assert shown[f"metrics/{experiment}/train/metrics.json"]["data"]["step"] == 2  # the last epoch

    iris = shown["metrics/iris_mlp/evaluate/metrics.json"]["data"]
    assert 0 <= iris["accuracy"] <= 1
    assert iris["n_test"] == 50  # a third of 150 flowers
    assert set(iris["per_class"]) == {"setosa", "versicolor", "virginica"}

    line = shown["metrics/linreg_line5/evaluate/metrics.json"]["data"]
    x, y = np.loadtxt(reproduced / "data/csv/line5.csv", delimiter=",", skiprows=1, unpack=True)
    slope, intercept = np.polyfit(x, y, 1)
    assert line["n_test"] == 5  # split: none evaluates on every row
    assert line["mse"] > 0 and isinstance(line["weight"], float) and isinstance(line["bias"], float)
    assert line["least_squares"]["weight"] == pytest.approx(slope, abs=1e-5)
    assert line["least_squares"]["bias"] == pytest.approx(intercept, abs=1e-5)


def test_dag_fans_out_per_dataset_and_experiment(reproduced):
    dot = reproduced.dvc("dag", "--dot").stdout
    edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot))
    for experiment, dataset in CHAINS.items():
        chain = [f"download@{dataset}", f"normalize@{dataset}"]
        chain += [f"{stage}@{experiment}" for stage in ("train", "evaluate", "plot")]
        assert set(zip(chain, chain[1:])) <= edges
    # The two chains share nothing: no edge joins a stage of one to a stage of the other.
    for a, b in edges:
        assert not ({a, b} & PER_ITEM["iris"] and {a, b} & PER_ITEM["line5"]), (a, b)


@pytest.fixture(scope="module")
def fewer_epochs(reproduced, tmp_path_factory):
    """linreg_line5 changed from 2 epochs to 1 and reproduced (not committed)."""
    repo = reproduced.copy(tmp_path_factory.mktemp("fewer_epochs") / "repo")
    repo.set_param("experiments.linreg_line5.train.epochs", 1)
    repo.status_before = repo.dvc_json("status")
    repo.repro_output = repo.dvc("repro").output
    return repo


def test_changing_one_experiment_reruns_only_its_stages(fewer_epochs):
    status = fewer_epochs.status_before
    assert "train@linreg_line5" in status
    assert all(stage.endswith("@linreg_line5") for stage in per_item(status)), status
    assert status["train@linreg_line5"] == [{"changed deps": {"params.yaml": {"experiments.linreg_line5": "modified"}}}]

    output = fewer_epochs.repro_output
    assert per_item(fewer_epochs.ran(output)) == {f"{s}@linreg_line5" for s in ("train", "evaluate", "plot")}
    for stage in ("train@iris_mlp", "evaluate@iris_mlp", "plot@iris_mlp", "normalize@line5"):
        assert f"Stage '{stage}' didn't change, skipping" in output

    params_diff = fewer_epochs.dvc_json("params", "diff")["params.yaml"]
    assert list(params_diff) == ["experiments.linreg_line5.train.epochs"]
    assert params_diff["experiments.linreg_line5.train.epochs"] | {"diff": None} == {"old": 2, "new": 1, "diff": None}
    metrics_diff = fewer_epochs.dvc_json("metrics", "diff")  # HEAD against the workspace
    assert set(metrics_diff) == {f"metrics/linreg_line5/{s}/metrics.json" for s in ("train", "evaluate")}
    mse = metrics_diff["metrics/linreg_line5/evaluate/metrics.json"]["mse"]
    assert mse["old"] != mse["new"]


def test_editing_model_code_outdates_training(workspace):
    nets = workspace / "src/torchrepro/models/nets.py"
    nets.write_text(nets.read_text() + "# a comment is still a change to a declared dependency\n")
    status = workspace.dvc_json("status")
    for experiment in EXPERIMENTS:
        [entry] = status[f"train@{experiment}"]
        assert entry == {"changed deps": {"src/torchrepro/models": "modified"}}
    assert not any(stage.startswith(("download@", "normalize@", "plot@")) for stage in status)


def test_editing_the_training_loop_does_not_outdate_evaluation(workspace):
    loop = workspace / "src/torchrepro/train/loop.py"
    loop.write_text(loop.read_text() + "# a change to training only\n")
    stages = set(workspace.dvc_json("status"))
    assert {f"train@{e}" for e in EXPERIMENTS} <= stages
    assert not any(stage.startswith(("evaluate@", "plot@")) for stage in stages)


def test_forced_retraining_is_byte_identical(workspace, reproduced):
    output = workspace.dvc("repro", "--force", "--single-item", "train@iris_mlp").output
    assert workspace.ran(output) == {"train@iris_mlp"}
    assert workspace.read_json("logs/iris_mlp.json")["epochs_run"] == 2
    for rel in ("models/iris_mlp/model.pt", "models/iris_mlp/model.json", *TRAIN_METRICS):
        assert workspace.digest(rel) == reproduced.digest(rel), rel
    before, after = reproduced.lock_outs()["train@iris_mlp"], workspace.lock_outs()["train@iris_mlp"]
    assert after["models/iris_mlp"] == before["models/iris_mlp"]
    # Same model bytes: nothing downstream of the model has anything to do.
    assert workspace.dvc_json("status") == {}


@pytest.fixture(scope="module")
def back_to_first(fewer_epochs, tmp_path_factory):
    """linreg_line5: 2 epochs (committed run), then 1, then 2 again: this is the third repro."""
    repo = fewer_epochs.copy(tmp_path_factory.mktemp("back_to_first") / "repo")
    repo.set_param("experiments.linreg_line5.train.epochs", 2)
    repo.repro_output = repo.dvc("repro").output
    return repo


def test_returning_to_earlier_params_restores_earlier_results(back_to_first, reproduced):
    for rel in (
        "metrics/linreg_line5/evaluate/metrics.json",
        "metrics/linreg_line5/train/plots/metrics/train/loss.tsv",
        "models/linreg_line5/model.pt",
    ):
        assert back_to_first.digest(rel) == reproduced.digest(rel), rel
    assert back_to_first.dvc_json("metrics", "diff") == {}
    # Same inputs as the committed run, so the plot stage comes straight from the run-cache.
    assert "plot@linreg_line5" in back_to_first.restored(back_to_first.repro_output)


def test_returning_to_earlier_params_skips_training(back_to_first, reproduced):
    output = back_to_first.repro_output
    assert {"train@linreg_line5", "evaluate@linreg_line5"} <= back_to_first.restored(output)
    assert not per_item(back_to_first.ran(output))
    # The log no stage declares is still the 1-epoch run's: training did not run again.
    assert back_to_first.read_json("logs/linreg_line5.json")["epochs_run"] == 1


def test_fresh_clone_reproduces_committed_results(reproduced, all_stages, fresh_clone):
    output = fresh_clone.result()  # `dvc repro` in a clone without DVC cache, outputs or metrics
    clone = fresh_clone.repo
    assert clone.ran(output) == all_stages
    assert clone.dvc_json("metrics", "diff") == {}
    assert clone.git("status", "--porcelain", "metrics").stdout == ""  # byte for byte as committed
    for experiment in EXPERIMENTS:
        assert clone.digest(f"models/{experiment}/model.pt") == reproduced.digest(f"models/{experiment}/model.pt")
    # Every output hash in dvc.lock is as committed, except wall-clock seconds (logs, report).
    committed, rebuilt = reproduced.lock_outs(), clone.lock_outs()
    differ = [
        f"{stage}: {path}"
        for stage, outs in committed.items()
        for path, md5 in outs.items()
        if not path.startswith(("logs/", "reports/")) and rebuilt[stage][path] != md5
    ]
    assert differ == []
