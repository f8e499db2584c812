"""`launcher: torchrun ...` under the real dvc CLI: two gloo processes train one experiment, and
a kill -9 of the whole launch mid-training resumes under the next `dvc repro` to the bytes of
an uninterrupted two-process run."""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest

from .test_resume import LONG_RUN, wait_for_checkpoint

# Hydra, which parses `dvc exp run -S`, refuses a second `=` in an unquoted value: a space instead.
LAUNCHER = "torchrun --standalone --nproc_per_node 2"
EPOCHS = 20  # of 50 steps: seconds under two ranks, long enough to be killed after the first
RUN = {**LONG_RUN, "epochs": EPOCHS}


@pytest.mark.slow  # 20 epochs under torchrun, killed and resumed: tests/test_distributed.py runs two ranks by default
def test_torchrun_trains_and_a_killed_launch_resumes_to_the_same_bytes(reproduced, tmp_path):
    killed, reference = reproduced.copy(tmp_path / "killed"), reproduced.copy(tmp_path / "reference")
    for repo in (killed, reference):
        shutil.rmtree(repo / ".resume")
    killed.set_param("experiments.iris_mlp.train", RUN)
    killed.set_param("launcher", LAUNCHER)
    # The command users type, in the background meanwhile.
    overrides = [f"experiments.iris_mlp.train.{k}={v}" for k, v in RUN.items()] + [f"launcher={LAUNCHER}"]
    uninterrupted = reference.background("exp", "run", *(a for o in overrides for a in ("-S", o)), "train@iris_mlp")

    log = tmp_path / "killed.log"
    process = killed.popen_dvc("repro", "train@iris_mlp", log=log)
    try:
        wait_for_checkpoint(killed, process, log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # dvc, torchrun and both ranks
        process.wait()
    assert not (killed / "models/iris_mlp/model.pt").exists()

    result = killed.dvc("repro", "train@iris_mlp")
    assert killed.ran(result.output) == {"train@iris_mlp"}
    resumed = [int(epoch) for epoch in re.findall(r"\biris_mlp: resumed from epoch (\d+) \(", result.stderr)]
    assert len(resumed) == 1 and 1 <= resumed[0] < EPOCHS, result.output[-3000:]  # said once: by rank 0
    train_log = killed.read_json("logs/iris_mlp.json")
    assert train_log["world_size"] == 2 and train_log["epochs_run"] == EPOCHS - resumed[0]

    uninterrupted.result()
    assert reference.params()["launcher"] == LAUNCHER
    assert reference.read_json("logs/iris_mlp.json")["world_size"] == 2
    for rel in ("models/iris_mlp/model.pt", "metrics/iris_mlp/train/plots/metrics/train/loss.tsv"):
        assert killed.digest(rel) == reference.digest(rel), rel
