"""The README's `dvc exp show` command on the project's own metrics: what an edit changed, in
120 columns, where plain `dvc exp show` has over 400 columns named by file paths."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile

from .conftest import PROJECT, Repo

# The command as the README gives it (test_readme_gives_this_command checks that it does).
COMMAND = "dvc exp show --no-pager --only-changed --drop 'Created|.*metrics\\.json:(?!(accuracy|mse)$)'"
ACCURACY = "metrics/iris_mlp/evaluate/metrics.json"


def test_readme_gives_this_command():
    assert COMMAND in (PROJECT / "README.md").read_text()


def test_an_edit_and_its_headline_metric_fit_120_columns(tmp_path):
    """The committed dvc.yaml, params.yaml, dvc.lock and metrics/ at HEAD; in the workspace, one
    param edited and the metrics files as its rerun would leave them."""
    repo = Repo(tmp_path / "repo")
    repo.root.mkdir()
    committed_files = subprocess.run(  # HEAD's files, not a working tree an earlier command rewrote
        ["git", "archive", "HEAD", "dvc.yaml", "dvc.lock", "params.yaml", "metrics"],
        cwd=PROJECT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(committed_files)) as archive:
        archive.extractall(repo.root, filter="data")
    repo.git("init", "-q", "-b", "main")
    repo.dvc("init", "-q")
    repo.commit("the project's metrics")
    committed = repo.read_json(ACCURACY)
    epochs = repo.params()["experiments"]["iris_mlp"]["train"]["epochs"]
    repo.set_param("experiments.iris_mlp.train.epochs", epochs + 1)
    rerun = committed | {"accuracy": round(committed["accuracy"] - 0.02, 6), "loss": committed["loss"] + 0.1}
    (repo / ACCURACY).write_text(json.dumps(rerun, indent=4) + "\n")

    repo.env["COLUMNS"] = "120"  # the terminal's width, as rich (DVC's table) reads it
    shown = repo.run(*shlex.split(COMMAND)).stdout
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 120, shown
    assert "…" not in shown, shown  # no column folded away
    header = lines[1].split()
    assert header == ["Experiment", f"{ACCURACY}:accuracy", "experiments.iris_mlp.train.epochs"], shown
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:5]}
    assert rows == {
        "workspace": [f"{rerun['accuracy']:g}", str(epochs + 1)],
        "main": [f"{committed['accuracy']:g}", str(epochs)],
    }, shown
