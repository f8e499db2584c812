"""Reruns of training under the real `dvc` CLI: a forced one trains again and gives the same
bytes; one after a kill between the end of training and DVC's record trains nothing; a failed
one leaves the git-tracked metrics as they were before DVC removed them."""

from __future__ import annotations

import shutil

import pytest

from .test_bad_input import error_lines

TRAIN_OUTPUTS = (
    "models/iris_mlp/model.pt",
    "models/iris_mlp/model.json",
    "metrics/iris_mlp/train/metrics.json",
    *(f"metrics/iris_mlp/train/plots/metrics/{s}/{m}.tsv" for s in ("train", "test") for m in ("loss", "accuracy")),
)


def epochs(repo, experiment: str = "iris_mlp") -> tuple[int, int]:
    """(resumed from epoch, epochs run) of the experiment's last training, from its log."""
    log = repo.read_json(f"logs/{experiment}.json")
    return log["resumed_from_epoch"], log["epochs_run"]


def assert_as_reproduced(repo, reproduced) -> None:
    for rel in TRAIN_OUTPUTS:
        assert repo.digest(rel) == reproduced.digest(rel), rel


@pytest.mark.parametrize(
    "command", [("repro",), pytest.param(("exp", "run"), marks=pytest.mark.slow)], ids=["repro", "exp-run"]
)
def test_a_forced_rerun_trains_again_to_the_same_bytes(workspace, reproduced, command):
    """`dvc repro -f` checks that training reproduces: the finished run's resume checkpoint is
    still there, but DVC has recorded that run, so the stage trains every epoch again."""
    assert list((workspace / ".resume/iris_mlp").glob("*.pt"))
    output = workspace.dvc(*command, "--force", "--single-item", "train@iris_mlp").output
    assert workspace.ran(output) == {"train@iris_mlp"} and "resumed from" not in output
    assert epochs(workspace) == (0, 2)
    assert_as_reproduced(workspace, reproduced)
    assert workspace.git("status", "--porcelain").stdout == ""  # dvc.lock and metrics as committed
    assert workspace.dvc_json("status") == {}


@pytest.mark.slow  # every stage of the tiny project again: as long as its first `dvc repro`
def test_a_forced_repro_of_every_stage_leaves_git_status_clean(workspace, reproduced):
    """Each stage runs again, with other wall-clock seconds: no tracked file, dvc.lock included,
    may hold them, so one host is enough to catch one that does."""
    output = workspace.dvc("repro", "--force").output
    assert workspace.ran(output) == workspace.ran(reproduced.repro_output)
    assert "resumed from" not in output and epochs(workspace, "linreg_line5") == (0, 2)
    assert workspace.git("status", "--porcelain").stdout == ""
    assert workspace.dvc_json("status") == {}


def test_a_run_dvc_did_not_record_is_not_trained_again(workspace, reproduced):
    """As if dvc were killed after the stage finished: the stage's own command trains, DVC never
    records it; the next `dvc repro` writes the outputs from the final checkpoint."""
    loop = workspace / "src/torchrepro/train/loop.py"
    loop.write_text(loop.read_text() + "# an edit: training is out of date, its results are not\n")
    workspace.python("stages/train.py", "iris_mlp")  # the stage's command, outside DVC
    assert epochs(workspace) == (0, 2)

    output = workspace.dvc("repro", "train@iris_mlp").output
    assert workspace.ran(output) == {"train@iris_mlp"}
    assert epochs(workspace) == (2, 0)  # nothing trained
    assert_as_reproduced(workspace, reproduced)
    assert workspace.dvc_json("status", "train@iris_mlp") == {}

    # Now DVC has recorded the run: forcing it trains again.
    workspace.dvc("repro", "--force", "--single-item", "train@iris_mlp")
    assert epochs(workspace) == (0, 2)
    assert_as_reproduced(workspace, reproduced)


def unusable_resume_folder(repo) -> str:
    """A file where iris_mlp's resume folder belongs: the checkpoint after epoch 1 fails."""
    shutil.rmtree(repo / ".resume/iris_mlp")
    (repo / ".resume/iris_mlp").write_text("not a folder")
    return ".resume/iris_mlp"


def diverging(repo) -> str:
    """linreg_line5 at a learning rate whose loss overflows after a few epochs."""
    repo.set_param("experiments.linreg_line5.train", {"optimizer": "sgd", "lr": 1.0, "batch_size": 2, "epochs": 30})
    return "training diverged at epoch 5"


@pytest.mark.parametrize(
    "experiment, fault",
    [("iris_mlp", unusable_resume_folder), ("linreg_line5", diverging)],
    ids=["unusable-resume-folder", "diverging"],
)
def test_a_failed_training_leaves_the_committed_metrics(workspace, reproduced, experiment, fault):
    """DVC removes the stage's outputs, the git-tracked metrics too, before it runs it; the
    stage fails after logging some epochs and puts back what dvc.lock records."""
    says = fault(workspace)
    result = workspace.dvc("repro", "--force", "--single-item", f"train@{experiment}", check=False)
    assert result.returncode != 0 and workspace.ran(result.output) == {f"train@{experiment}"}
    [line] = error_lines(result.stderr)
    assert says in line, line
    assert "warning" not in result.stderr
    assert workspace.git("status", "--porcelain", "metrics", "dvc.lock").stdout == ""
    live = f"metrics/{experiment}/train"
    files = sorted(p.relative_to(workspace.root).as_posix() for p in (workspace / live).rglob("*") if p.is_file())
    assert files and all(workspace.digest(rel) == reproduced.digest(rel) for rel in files)
    assert files == sorted(reproduced.git("ls-files", live).stdout.split())
