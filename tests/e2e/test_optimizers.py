"""Any torch.optim optimizer and scheduler from the command line, through `dvc exp run -S`:
the same form as pytorch/examples' MNIST recipe (Adadelta lr 1.0, StepLR step 1 gamma 0.7)."""

from __future__ import annotations

import pytest

TRAIN = "experiments.iris_mlp.train"
METRICS = "metrics/iris_mlp/evaluate/metrics.json"


@pytest.fixture(scope="module")
def adadelta_steplr(reproduced, tmp_path_factory):
    repo = reproduced.copy(tmp_path_factory.mktemp("adadelta") / "repo")
    repo.exp_output = repo.dvc(
        "exp", "run",
        "-S", f"{TRAIN}.optimizer=adadelta",
        "-S", f"{TRAIN}.lr=1.0",
        "-S", f"+{TRAIN}.scheduler.name=step",
        "-S", f"+{TRAIN}.scheduler.step_size=1",
        "-S", f"+{TRAIN}.scheduler.gamma=0.7",
    ).output  # fmt: skip
    return repo


def test_the_experiment_trains_and_evaluates_with_them(adadelta_steplr, reproduced):
    repo = adadelta_steplr
    assert {"validate", "train@iris_mlp", "evaluate@iris_mlp"} <= repo.ran(repo.exp_output)
    train = repo.params()["experiments"]["iris_mlp"]["train"]
    assert train["optimizer"] == "adadelta" and train["scheduler"] == {"name": "step", "step_size": 1, "gamma": 0.7}
    info = repo.read_json("models/iris_mlp/model.json")
    assert info["params"]["train"]["scheduler"] == {"name": "step", "step_size": 1, "gamma": 0.7}
    assert repo.read_json(METRICS) != reproduced.read_json(METRICS)  # another optimizer, another model


def test_exp_show_has_the_params_and_metrics(adadelta_steplr):
    rows = adadelta_steplr.dvc_json("exp", "show")
    [experiment] = [exp for row in rows for exp in row.get("experiments") or []]  # the one `dvc exp run` made
    data = experiment["revs"][0]["data"]
    params = data["params"]["params.yaml"]["data"]["experiments"]["iris_mlp"]["train"]
    assert params["optimizer"] == "adadelta" and params["scheduler"]["name"] == "step"
    assert 0 <= data["metrics"][METRICS]["data"]["accuracy"] <= 1
    assert data["metrics"]["metrics/iris_mlp/train/metrics.json"]["data"]["step"] == 2
