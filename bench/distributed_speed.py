"""Distributed training speed: seconds per epoch of one experiment trained by 1 process and by
N processes under torchrun (gloo on CPU, nccl on CUDA), side by side in one run.

Each side is the train stage itself (`python stages/train.py` or `torchrun --standalone
--nproc_per_node=N stages/train.py`) on the shipped recipes and the shipped mnist-5k data,
in a scratch project; the seconds come from the train log (the epochs' loop time, not start-up).
The global batch is the recipe's in every case, so each rank gets batch_size / N rows a step.

    python bench/distributed_speed.py                        # mlp, 1 vs 2 processes, CPU
    python bench/distributed_speed.py --recipes twolayernet mlp cnn --epochs 3
    python bench/distributed_speed.py --device cuda --nproc 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from clone import env  # bench/clone.py

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def scratch_params(work: Path, recipes: list[str], epochs: int, device: str) -> Path:
    """params.yaml's own recipes and mnist-5k datasets; the stages run in `work`, so the
    shipped relative paths land there."""
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    experiments = {}
    for name in recipes:
        experiment = dict(shipped["experiments"][f"mnist_{name}"])
        experiment["train"] = {**experiment["train"], "epochs": epochs}
        experiments[name] = experiment
    datasets = {e["dataset"]: shipped["datasets"][e["dataset"]] for e in experiments.values()}
    params = {
        **{k: shipped[k] for k in ("seed", "determinism", "launcher")},
        "device": device,
        "paths": shipped["paths"],
        "datasets": datasets,
        "experiments": experiments,
    }
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(command: list[str], params: Path) -> None:
    result = subprocess.run(
        [*command, "--params", str(params)], cwd=params.parent, env=env(ROOT), capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"error: `{' '.join(command)}` failed:\n{result.stderr[-3000:]}")


def train(recipe: str, nproc: int, params: Path, work: Path) -> list[float]:
    """Train `recipe` with `nproc` processes from scratch; each epoch's seconds."""
    for output in ("models", "metrics", "logs", "resume"):
        shutil.rmtree(work / output, ignore_errors=True)
    if nproc == 1:
        launcher = [str(BIN / "python")]
    else:
        launcher = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}"]
    run_stage([*launcher, str(ROOT / "stages/train.py"), recipe], params)
    log = json.loads((work / "logs" / f"{recipe}.json").read_text())
    assert log.get("world_size", 1) == nproc, log
    return log["seconds_per_epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=["twolayernet", "mlp", "cnn"], default=["mlp"])
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="torchrepro-bench-ddp-"))
    try:
        params = scratch_params(work, args.recipes, args.epochs, args.device)
        shipped = yaml.safe_load(params.read_text())
        for dataset in shipped["datasets"]:
            run_stage([str(BIN / "python"), str(ROOT / "stages/download.py"), dataset], params)
            run_stage([str(BIN / "python"), str(ROOT / "stages/normalize.py"), dataset], params)
        print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(f"# device {args.device}, determinism {shipped['determinism']}, {args.epochs} epochs, mnist-5k")
        print(f"{'recipe':<12} {'processes':>9} {'s/epoch':>9} {'speed-up':>9}")
        for recipe in args.recipes:
            base = None
            for nproc in args.nproc:
                seconds = statistics.median(train(recipe, nproc, params, work))
                base = base or seconds
                print(f"{recipe:<12} {nproc:>9} {seconds:>9.3f} {base / seconds:>8.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
