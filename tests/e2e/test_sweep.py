"""A parameter sweep with `dvc exp`, list values set from the command line included."""

from __future__ import annotations

import pytest

LR = "experiments.iris_mlp.train.lr"
HIDDEN = "experiments.iris_mlp.model.hidden_sizes"
METRICS = "metrics/iris_mlp/evaluate/metrics.json"


def iris_settings(params: dict) -> tuple[float, tuple[int, ...]]:
    """(lr, hidden_sizes) of iris_mlp in a params.yaml mapping."""
    iris = params["experiments"]["iris_mlp"]
    return iris["train"]["lr"], tuple(iris["model"]["hidden_sizes"])


@pytest.mark.slow
def test_queued_sweep_then_apply(workspace, reproduced):
    queued = workspace.dvc("exp", "run", "--queue", "-S", f"{LR}=0.001,0.01").output
    assert queued.count("Queued experiment") == 2
    workspace.dvc("exp", "run", "--queue", "-S", f"{HIDDEN}=[4,4]")  # a list, from the command line
    workspace.dvc("exp", "run", "--run-all")

    experiments = {
        exp["name"]: exp["revs"][0]["data"]
        for row in workspace.dvc_json("exp", "show")
        for exp in row.get("experiments") or []
    }
    settings = {iris_settings(data["params"]["params.yaml"]["data"]): name for name, data in experiments.items()}
    assert set(settings) == {(0.001, (8,)), (0.01, (8,)), (0.01, (4, 4))}
    metrics = {key: experiments[name]["metrics"][METRICS]["data"] for key, name in settings.items()}
    assert metrics[(0.001, (8,))] != metrics[(0.01, (8,))]
    # lr 0.01 with [8] hidden units is the committed baseline: the same numbers again.
    assert metrics[(0.01, (8,))] == reproduced.read_json(METRICS)

    workspace.dvc("exp", "apply", settings[(0.001, (8,))])
    assert iris_settings(workspace.params()) == (0.001, (8,))
    assert workspace.read_json(METRICS) == metrics[(0.001, (8,))]

    workspace.dvc("exp", "apply", settings[(0.01, (4, 4))])
    info = workspace.read_json("models/iris_mlp/model.json")
    assert info["model_kwargs"]["hidden_sizes"] == [4, 4]
    assert info["n_parameters"] == (4 * 4 + 4) + (4 * 4 + 4) + (4 * 3 + 3)  # 4 features -> 4 -> 4 -> 3 classes
    assert workspace.dvc_json("status") == {}
