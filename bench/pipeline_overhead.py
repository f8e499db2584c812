"""Pipeline overhead: how much of a cold `dvc repro` is training, and what a no-op costs.

In a fresh clone of this repository (HEAD, default params, empty DVC cache):
  1. a cold `dvc repro`: total wall time against the sum of the training loops' own
     seconds (logs/<experiment>.json);
  2. a no-op `dvc repro` (nothing changed) against DVC's own no-op on a one-stage project.

    python bench/pipeline_overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(repo: Path) -> dict[str, str]:
    """The venv first on PATH (dvc.yaml runs `python`), and the clone's own library."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(repo / "src"),
            "DVC_NO_ANALYTICS": "1"}  # fmt: skip


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env(cwd), check=True, capture_output=True)
    return time.perf_counter() - started


def noop(repo: Path, runs: int = 5) -> float:
    return statistics.median(timed(["dvc", "repro"], repo) for _ in range(runs))


def one_stage_project(where: Path) -> Path:
    repo = where / "one-stage"
    repo.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"],
                    ["dvc", "stage", "add", "-q", "-n", "hello", "-o", "out.txt", "echo hello > out.txt"],
                    ["dvc", "repro", "-q"]):  # fmt: skip
        subprocess.run(command, cwd=repo, env=env(repo), check=True, capture_output=True)
    return repo


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="torchrepro-overhead-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        cold = timed(["dvc", "repro"], clone)
        logs = [json.loads(p.read_text()) for p in sorted((clone / "logs").glob("*.json"))]
        training = sum(log["train_seconds"] for log in logs)
        print(f"cold dvc repro: {cold:.1f} s wall; training loops: {training:.1f} s "
              f"({training / cold:.0%} of the wall time, {len(logs)} experiments)")  # fmt: skip
        ours, baseline = noop(clone), noop(one_stage_project(Path(tmp)))
        print(f"no-op dvc repro: {ours:.2f} s; one-stage project: {baseline:.2f} s; ratio {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
