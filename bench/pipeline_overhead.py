"""Pipeline overhead: what the edit-rerun loop and a cold `dvc repro` cost beyond training.

In fresh clones of this repository (HEAD, default params, empty DVC cache), one run reports:
  1. DVC's own floor: `dvc exp run -S` of one param in a project of 5 trivial Python stages
     (one imports torch, as our train stage does), and a cold `dvc repro` of 39 trivial
     Python stages, as many as the default pipeline has;
  2. each stage kind's fixed cost: its process run by hand on the smallest workload
     (linreg_line5: 5 points, 10 epochs), against `python -c "import torch"`; validate both
     with the torch checks it remembers and without them;
  3. dvclive's cost per epoch, as the train stage logs (core/live.py);
  4. the edit-rerun cycle: `dvc exp run -S` of one param of iris_mlp and of mnist_mlp, wall
     time against that run's training seconds (logs/<experiment>.json): one more epoch, which
     continues the finished run, for iris_mlp also with validate's memo removed (its torch
     checks run again), and for iris_mlp another learning rate, which trains anew;
  5. the whole default pipeline from scratch, `dvc repro` and scripts/repro_parallel.py, each
     against the summed training seconds.

With --fashion, the cold runs train the three image recipes on Fashion-MNIST's 60,000 images
(bench/clone.py). Everything runs with the default params' own settings.

    python bench/pipeline_overhead.py [--jobs N] [--fashion [--local-dir DIR]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from clone import env, fresh_clone, use_fashion_mnist  # bench/clone.py

SMALL = ("linreg_line5", "line5")  # the smallest experiment and its dataset
MEMO = "logs/params.checked.json"  # validate's memo of the torch checks that passed (validate.py)


def timed(command: list[str], cwd: Path, extra: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env={**env(cwd), **(extra or {})}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: `{' '.join(command)}` failed in {cwd}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - started


def median(command: list[str], cwd: Path, runs: int = 3) -> float:
    return statistics.median(timed(command, cwd) for _ in range(runs))


def init_project(repo: Path, dvc_yaml: str, params: str = "p: 0\n") -> Path:
    repo.mkdir()
    (repo / "dvc.yaml").write_text(dvc_yaml)
    (repo / "params.yaml").write_text(params)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        timed(command, repo)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    timed(["git", "add", "-A"], repo)
    timed(["git", *identity, "commit", "-qm", "trivial project"], repo)
    return repo


def trivial_stage(i: int, code: str, dep: str | None) -> str:
    deps = f"    deps:\n      - {dep}\n" if dep else "    params:\n      - p\n"
    return f'  s{i}:\n    cmd: python -c "{code}"\n{deps}    outs:\n      - out{i}.txt\n'


def dvc_floor(where: Path) -> tuple[float, float]:
    """(`dvc exp run -S` of 5 trivial stages, the second importing torch; cold `dvc repro` of
    39 trivial stages): DVC's own seconds, and Python's start-up, for that many stages."""
    write = "open('out{i}.txt', 'w').write('{i}')"
    five = "".join(
        trivial_stage(i, ("import torch; " if i == 1 else "") + write.format(i=i), f"out{i - 1}.txt" if i else None)
        for i in range(5)
    )
    small = init_project(where / "trivial-5", "stages:\n" + five)
    timed(["dvc", "repro", "-q"], small)
    timed(["git", "add", "-A"], small)
    timed(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "run"], small)
    exp_run = statistics.median(timed(["dvc", "exp", "run", "-S", f"p={n}"], small) for n in (1, 2, 3))
    many = "".join(trivial_stage(i, write.format(i=i), f"out{i - 1}.txt" if i else None) for i in range(39))
    return exp_run, timed(["dvc", "repro"], init_project(where / "trivial-39", "stages:\n" + many))


def stage_costs(clone: Path) -> dict[str, float]:
    """Median wall seconds of each stage's process on the smallest workload (after a repro)."""
    experiment, dataset = SMALL
    commands = {
        "validate (remembered)": ["stages/validate.py", "logs/params.ok"],  # its torch checks passed before
        "download": ["stages/download.py", dataset],
        "normalize": ["stages/normalize.py", dataset],
        "train": ["stages/train.py", experiment],
        "evaluate": ["stages/evaluate.py", experiment],
        "plot": ["stages/plot.py", experiment],
        "report": ["stages/report.py"],
    }
    costs = {kind: median(["python", *args], clone) for kind, args in commands.items()}
    # validate without its memo: every experiment's optimizer and scheduler built with torch
    first = ["sh", "-c", f"rm -f {MEMO} && python stages/validate.py logs/params.ok"]
    return {"validate (first check)": median(first, clone)} | costs


def dvclive_per_epoch(clone: Path, epochs: int = 300) -> float:
    """Milliseconds per epoch of the train stage's dvclive logging (4 metrics, then next_step)."""
    code = f"""
import time
from torchrepro.core.live import open_live
from torchrepro.train.stage import log_epoch
live = open_live("bench-live")
rows = [{{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "test_loss": 2 / e, "test_accuracy": 0.4}}
        for e in range(1, {epochs} + 1)]
log_epoch(live, rows[0])  # opening dvclive is the stage's fixed cost, not an epoch's
started = time.perf_counter()
for row in rows[1:]:
    log_epoch(live, row)
live.end()
print((time.perf_counter() - started) / ({epochs} - 1) * 1000)
"""
    done = subprocess.run(["python", "-c", code], cwd=clone, env=env(clone), capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def train_seconds(clone: Path, experiments: list[str] | None = None) -> float:
    experiments = experiments or yaml.safe_load((clone / "params.yaml").read_text())["experiments"]
    return sum(json.loads((clone / "logs" / f"{name}.json").read_text())["train_seconds"] for name in experiments)


def edit_rerun(clone: Path, experiment: str, key: str, forget: bool = False) -> tuple[float, float]:
    """(wall seconds of `dvc exp run -S` of one more epoch or of twice the learning rate, that
    run's training seconds). forget: validate's memo removed first, so it checks with torch."""
    if forget:
        (clone / MEMO).unlink()
    train = yaml.safe_load((clone / "params.yaml").read_text())["experiments"][experiment]["train"]
    value = train["epochs"] + 1 if key == "epochs" else train["lr"] * 2
    wall = timed(["dvc", "exp", "run", "-S", f"experiments.{experiment}.train.{key}={value}"], clone)
    return wall, train_seconds(clone, [experiment])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="for repro_parallel.py (default: cores)")
    parser.add_argument("--fashion", action="store_true", help="train the image recipes on Fashion-MNIST")
    parser.add_argument("--local-dir", type=Path, help="with --fashion: directory with the four IDX files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torchrepro-overhead-") as tmp:
        tmp = Path(tmp)
        floor5, floor39 = dvc_floor(tmp)
        print(f"DVC's floor: `dvc exp run -S` of 5 trivial stages (one imports torch) {floor5:.1f} s; ", end="")
        print(f"cold `dvc repro` of 39 trivial stages {floor39:.1f} s")

        clones = {}
        for name in ("sequential", "parallel"):
            clones[name] = fresh_clone(tmp / name)
            if args.fashion:
                use_fashion_mnist(clones[name], args.local_dir)
        seq = timed(["dvc", "repro"], clones["sequential"])
        seq_train = train_seconds(clones["sequential"])
        par = timed(["python", "scripts/repro_parallel.py", "--jobs", str(args.jobs)], clones["parallel"])
        par_train = train_seconds(clones["parallel"])
        listed = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=clones["sequential"],
                                env=env(clones["sequential"]), capture_output=True, text=True, check=True)  # fmt: skip
        n_stages = len(listed.stdout.split())
        clone = clones["sequential"]

        torch_import = median(["python", "-c", "import torch"], clone, runs=5)
        print(f"`python -c 'import torch'`: {torch_import:.2f} s; each stage's process on {SMALL[0]}:")
        for kind, seconds in stage_costs(clone).items():
            print(f"  {kind:<22} {seconds:5.2f} s  ({seconds / torch_import:.2f}x import torch)")
        print(f"dvclive per epoch: {dvclive_per_epoch(clone):.2f} ms")

        cycles = [("iris_mlp", "epochs", False), ("iris_mlp", "epochs", True), ("iris_mlp", "lr", False)]
        for experiment, key, forget in [*cycles, ("mnist_mlp", "epochs", False)]:
            wall, training = edit_rerun(clone, experiment, key, forget)
            label = f"{experiment} {key}" + (" (validate memo removed)" if forget else "")
            print(
                f"edit-rerun {label}: {wall:.1f} s wall, {training:.1f} s training, "
                f"{wall - training:.1f} s beyond it (target: DVC floor {floor5:.1f} s + 5 s)"
            )
        print(
            f"cold dvc repro ({n_stages} stages): {seq:.1f} s wall, {seq_train:.1f} s training "
            f"(target: 1.5 x training + {floor39:.1f} s = {1.5 * seq_train + floor39:.1f} s)"
        )
        print(f"cold repro_parallel.py --jobs {args.jobs}: {par:.1f} s wall, {par_train:.1f} s training")


if __name__ == "__main__":
    main()
