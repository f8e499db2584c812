"""Pipeline overhead: how much of a cold `dvc repro` is training, and what a no-op costs.

In a fresh clone of this repository (HEAD, default params, empty DVC cache):
  1. a cold `dvc repro`: total wall time against the sum of the training loops' own
     seconds (logs/<experiment>.json), with the wall time split by stage kind;
  2. a no-op `dvc repro` (nothing changed) against DVC's own no-op on a one-stage project,
     and on a project of as many trivial stages as ours (DVC's floor for that many stages).

With --fashion, the cold run trains the three image recipes (their own epochs) on
Fashion-MNIST's 60,000 images instead of the 4,000 digits of the default params: the same
fixed costs beside training at full size. Data as in train_memory.py.

    python bench/pipeline_overhead.py
    python bench/pipeline_overhead.py --fashion [--local-dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clone import env, fresh_clone, use_fashion_mnist  # bench/clone.py


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env(cwd), check=True, capture_output=True)
    return time.perf_counter() - started


def cold_repro(repo: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of `dvc repro`, and seconds per stage kind (train, evaluate, ...): from
    the moment DVC announces a stage to the moment it announces the next one or exits."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=env(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    spans: dict[str, float] = collections.defaultdict(float)
    current, since = "start-up", started
    for line in proc.stdout:
        if match := re.match(r"Running stage '([^']+)'", line):
            now = time.perf_counter()
            spans[current] += now - since
            current, since = match.group(1), now
    if proc.wait():
        sys.exit("error: dvc repro failed")
    total = time.perf_counter() - started
    spans[current] += total - (since - started)
    return total, dict(spans)


def noop(repo: Path, runs: int = 7) -> float:
    return statistics.median(timed(["dvc", "repro"], repo) for _ in range(runs))


def trivial_project(where: Path, n_stages: int) -> Path:
    """A project of n stages that each write one small file: DVC's own cost per stage."""
    repo = where / f"trivial-{n_stages}"
    repo.mkdir()
    stages = "".join(
        f"  s{i}:\n    cmd: echo {i} > out{i}.txt\n    outs:\n      - out{i}.txt\n" for i in range(n_stages)
    )
    (repo / "dvc.yaml").write_text("stages:\n" + stages)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(command, cwd=repo, env=env(repo), check=True, capture_output=True)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion", action="store_true", help="train the image recipes on Fashion-MNIST")
    parser.add_argument("--local-dir", type=Path, help="with --fashion: directory with the four IDX files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="torchrepro-overhead-") as tmp:
        clone = fresh_clone(Path(tmp))
        if args.fashion:
            use_fashion_mnist(clone, args.local_dir)
        import_torch = timed([sys.executable, "-c", "import torch"], clone)
        cold, spans = cold_repro(clone)
        logs = [json.loads(p.read_text()) for p in sorted((clone / "logs").glob("*.json"))]
        training = sum(log["train_seconds"] for log in logs)
        print(
            f"cold dvc repro: {cold:.1f} s wall; training loops: {training:.1f} s "
            f"({training / cold:.0%} of the wall time, {len(logs)} experiments)"
        )
        kinds: dict[str, list[float]] = collections.defaultdict(list)
        for stage, seconds in spans.items():
            kinds[stage.split("@")[0]].append(seconds)
        for kind, seconds in kinds.items():
            print(
                f"  {kind:<12} {len(seconds):>2} stage(s) {sum(seconds):6.1f} s  ({sum(seconds) / len(seconds):.2f} s each)"
            )
        print(f"  (`import torch` alone: {import_torch:.2f} s per process)")

        n_stages = len(spans) - ("start-up" in spans)
        ours = noop(clone)
        one, many = noop(trivial_project(Path(tmp), 1)), noop(trivial_project(Path(tmp), n_stages))
        print(
            f"no-op dvc repro: {ours:.2f} s; one-stage project: {one:.2f} s (ratio {ours / one:.2f}x); "
            f"{n_stages} trivial stages: {many:.2f} s (ratio {many / one:.2f}x)"
        )


if __name__ == "__main__":
    main()
