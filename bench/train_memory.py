"""Peak memory of the real train stage on 60,000 images, one process per recipe.

In a fresh clone of this repository (HEAD), the three image experiments of params.yaml
are pointed at Fashion-MNIST and cut to `--epochs` epochs; the download and normalize
stages prepare the data, then `python stages/train.py <experiment>` runs once per
recipe and its maximum resident set size is read from the kernel (os.wait4), as
`/usr/bin/time -v` reports it, next to that of `python -c "import torch"` on the same
machine. The target: the stage's excess over that baseline stays under 3x the bytes of the
training split as stored (60,000 uint8 images of 28x28 and their int64 labels).

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), or the four
Fashion-MNIST IDX files in --local-dir.

    python bench/train_memory.py
    python bench/train_memory.py --local-dir ~/data/fashion-mnist --epochs 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clone import IMAGE_EXPERIMENTS, env, fresh_clone, use_fashion_mnist  # bench/clone.py

TRAIN_SPLIT_BYTES = 60_000 * 28 * 28 + 60_000 * 8  # uint8 images, int64 labels


def peak_mib(command: list[str], repo: Path) -> tuple[float, float]:
    """Run a command to completion; its maximum resident set size in MiB and its wall seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=repo, env=env(repo), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{proc.stderr.read().decode()}")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-dir", type=Path, help="directory with the four Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per recipe (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--experiments", nargs="+", choices=IMAGE_EXPERIMENTS, default=list(IMAGE_EXPERIMENTS))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each train stage (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="torchrepro-memory-") as tmp:
        repo = fresh_clone(Path(tmp))
        use_fashion_mnist(repo, args.local_dir, args.epochs, args.device)
        for stage in ("download", "normalize"):
            peak_mib([sys.executable, f"stages/{stage}.py", "fashion-mnist"], repo)
        baseline, _ = peak_mib([sys.executable, "-c", "import torch"], repo)
        budget = 3 * TRAIN_SPLIT_BYTES / 2**20
        print(f"train stage on Fashion-MNIST (60,000 training images), {args.epochs} epoch(s), device {args.device}")
        print(
            f"baseline `import torch`: {baseline:.0f} MiB; budget for the excess: 3 x {TRAIN_SPLIT_BYTES / 2**20:.0f} MiB"
        )
        print(
            f"{'experiment':<18} {'peak RSS MiB':>12} {'excess MiB':>10} {'excess / split':>14} {'within':>6} {'wall s':>7}"
        )
        for name in args.experiments:
            for _ in range(args.repeat):
                mib, seconds = peak_mib([sys.executable, "stages/train.py", name], repo)
                excess = mib - baseline
                ratio = excess * 2**20 / TRAIN_SPLIT_BYTES
                within = "yes" if excess < budget else "NO"
                print(
                    f"{name:<18} {mib:>12.0f} {excess:>10.0f} {ratio:>13.2f}x {within:>6} {seconds:>7.1f}", flush=True
                )


if __name__ == "__main__":
    main()
