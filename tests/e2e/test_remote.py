"""A DVC remote: push outputs and run-cache, clone the git repo elsewhere, pull, and nothing reruns."""

from __future__ import annotations

OUTPUTS = (
    "data/processed/iris/x_train.npy",
    "data/processed/line5/meta.json",
    "models/iris_mlp/model.pt",
    "models/linreg_line5/model.pt",
    "metrics/iris_mlp/evaluate/metrics.json",
    "plots/activations.png",
)


def test_push_then_pull_into_a_clone_restores_everything_without_running(workspace, tmp_path):
    storage = tmp_path / "storage"
    workspace.dvc("remote", "add", "--default", "local", str(storage))
    workspace.commit("add a local DVC remote")
    workspace.dvc("push", "--run-cache")
    assert workspace.dvc_json("status", "--cloud") == {}  # everything is on the remote
    assert any((storage / "runs").rglob("*")), "push --run-cache sent no run-cache entries"

    clone = workspace.clone(tmp_path / "clone")
    assert not (clone / "models/iris_mlp").exists()
    clone.dvc("pull")
    assert clone.dvc_json("status") == {}
    output = clone.dvc("repro").output
    assert clone.ran(output) == set() and not clone.restored(output)
    for rel in OUTPUTS:
        assert clone.digest(rel) == workspace.digest(rel), rel
