"""Training across processes: the ranks' environment, their slices of a batch, and two gloo
processes under torchrun against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from torchrepro.core.errors import ParamsError
from torchrepro.core.params import parse_params
from torchrepro.models.checkpoint import safe_load
from torchrepro.train import stage
from torchrepro.train.distributed import World

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
# 48 training digits in batches of 7: six full batches, then 6, split 3/3; the full ones 3/4.
TRAIN = {"optimizer": "adam", "lr": 0.01, "batch_size": 7, "epochs": 3}


def test_one_process_without_a_launcher():
    assert World.from_env("python", {}) == World(1, 0, 0)
    # A job script's own shell has SLURM's names too: they count only under srun.
    assert World.from_env("python", {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}) == World()


def test_torchrun_and_srun_environments():
    assert World.from_env("torchrun --nnodes 2", {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(4, 3, 1)
    env = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    saved = dict(os.environ)
    try:
        assert World.from_env("srun python", env) == World(2, 1, 1)
        assert (os.environ["WORLD_SIZE"], os.environ["RANK"]) == ("2", "1")  # for env:// rendezvous
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0"}, "torchrun's environment is incomplete: WORLD_SIZE='2'"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK=2: the rank must lie in [0, size)"),
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "MASTER_ADDR is not set"),
    ],
)
def test_a_broken_launcher_environment_is_one_error(env, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace(")", r"\)")):
        World.from_env("srun python", env)


@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize(("start", "end"), [(0, 7), (14, 20), (5, 6)])
def test_the_ranks_split_a_batch_into_contiguous_near_equal_parts(size, start, end):
    parts = [World(size, rank, rank).part(start, end) for rank in range(size)]
    assert parts[0][0] == start and parts[-1][1] == end
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    lengths = [hi - lo for lo, hi in parts]
    assert max(lengths) - min(lengths) <= 1


def torchrun(params_file: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N stages/train.py digits_mlp` on gloo, as the
    train stage runs under `launcher: torchrun ...`, in the params file's folder (the project)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("WORLD_SIZE", None)
    script = str(ROOT / "stages" / "train.py")
    command = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", script, "digits_mlp"]
    return subprocess.run(
        [*command, "--params", params_file.name],
        cwd=params_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_params(tmp_path: Path, params_dict: dict, name: str) -> Path:
    """The tiny params with this run's own outputs (the processed data is shared)."""
    tree = json.loads(json.dumps(params_dict))
    for output in ("models", "metrics", "logs", "resume"):
        tree["paths"][output] = f"{name}/{output}"
    tree["experiments"]["digits_mlp"]["train"] = TRAIN
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def weights(params_file: Path) -> dict[str, torch.Tensor]:
    params = parse_params(yaml.safe_load(params_file.read_text()))
    return safe_load(params.paths.model_dir("digits_mlp") / "model.pt")


def test_two_gloo_processes_train_the_model_of_one_with_the_same_global_batch(tiny_params, params_dict, tmp_path):
    single = write_params(tmp_path, params_dict, "single")
    stage.run(parse_params(yaml.safe_load(single.read_text())), "digits_mlp", progress=False)
    runs = [write_params(tmp_path, params_dict, name) for name in ("ddp_a", "ddp_b")]
    for params_file in runs:
        result = torchrun(params_file)
        assert result.returncode == 0, result.stderr[-3000:]

    one, two = weights(single), weights(runs[0])
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
    # Two runs of two processes: the same bytes, model and metrics.
    for rel in ("models/digits_mlp/model.pt", "metrics/digits_mlp/train/plots/metrics/train/loss.tsv"):
        assert (tmp_path / "ddp_a" / rel).read_bytes() == (tmp_path / "ddp_b" / rel).read_bytes(), rel

    # Rank 0 alone writes: one log naming the world, one row per epoch, one resume checkpoint.
    log = json.loads((tmp_path / "ddp_a/logs/digits_mlp.json").read_text())
    assert log["world_size"] == 2 and log["epochs_run"] == TRAIN["epochs"]
    loss = (tmp_path / "ddp_a/metrics/digits_mlp/train/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in loss] == ["step", "1", "2", "3"]
    assert len(list((tmp_path / "ddp_a/resume/digits_mlp").iterdir())) == 1
    single_loss = (tmp_path / "single/metrics/digits_mlp/train/plots/metrics/train/loss.tsv").read_text().splitlines()
    for ours, theirs in zip(loss[1:], single_loss[1:], strict=True):
        assert float(ours.split("\t")[1]) == pytest.approx(float(theirs.split("\t")[1]), rel=1e-4)
