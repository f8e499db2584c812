"""A training run killed with SIGKILL resumes from its last epoch and ends exactly where an
uninterrupted run ends."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

EPOCHS = 50
# Batches of 2 make 50 optimizer steps per epoch: the run lasts long enough (>1 s) to be killed mid-way.
LONG_RUN = {"optimizer": "adam", "lr": 0.01, "batch_size": 2, "epochs": EPOCHS}


def wait_for_checkpoint(repo, process, log, timeout_s: float = 120.0) -> None:
    """Poll until iris_mlp's first resume checkpoint exists; fail if training ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any((repo / ".resume/iris_mlp").glob("*.pt")):
            return
        assert process.poll() is None, "training ended before it was interrupted:\n" + log.read_text()[-3000:]
        time.sleep(0.01)
    raise AssertionError(f"no resume checkpoint after {timeout_s} s")


def test_killed_training_resumes_and_matches_an_uninterrupted_run(reproduced, tmp_path):
    killed, reference = reproduced.copy(tmp_path / "killed"), reproduced.copy(tmp_path / "reference")
    for repo in (killed, reference):
        shutil.rmtree(repo / ".resume")  # the reproduced run's final checkpoints
        repo.set_param("experiments.iris_mlp.train", LONG_RUN)
    # The uninterrupted run goes on in the background meanwhile (the machine has 2 cores).
    uninterrupted = reference.background("repro", "evaluate@iris_mlp")

    log = tmp_path / "killed.log"
    process = killed.popen_dvc("repro", "train@iris_mlp", log=log)
    try:
        wait_for_checkpoint(killed, process, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage it runs
        process.wait()
    assert not (killed / "models/iris_mlp/model.pt").exists()  # killed before training finished

    result = killed.dvc("repro", "evaluate@iris_mlp")
    assert killed.ran(result.output) == {"train@iris_mlp", "evaluate@iris_mlp"}
    resumed = re.findall(r"\biris_mlp: resumed from epoch (\d+) \(", result.stderr)
    assert len(resumed) == 1, result.output[-3000:]
    epoch = int(resumed[0])
    assert 1 <= epoch < EPOCHS
    train_log = killed.read_json("logs/iris_mlp.json")
    assert (train_log["resumed_from_epoch"], train_log["epochs_run"]) == (epoch, EPOCHS - epoch)
    # The finished run's checkpoint stays: a kill before DVC records the stage costs nothing.
    assert len(list((killed / ".resume/iris_mlp").glob("*.pt"))) == 1

    assert "resumed" not in uninterrupted.result()
    for rel in (
        "models/iris_mlp/model.pt",
        "metrics/iris_mlp/train/plots/metrics/train/loss.tsv",
        "metrics/iris_mlp/evaluate/metrics.json",
    ):
        assert killed.digest(rel) == reference.digest(rel), rel
    assert killed.dvc_json("status") == reference.dvc_json("status")  # the same stages left to run
