"""How the real train stage scales with the dataset: peak anonymous memory and seconds per
epoch at 60,000, 250,000 and 1,000,000 training images.

In a fresh clone of this repository (HEAD), the mnist-5k digits are replicated to N training
images (plus 10,000 test images from held-out digits), written with the library's own normalize
path (prepare + store.save) and trained for one epoch by `python stages/train.py <experiment>`,
with the recipes of params.yaml (mnist_twolayernet, mnist_cnn). Memory is the stage's peak
RssAnon from /proc/<pid>/status, polled every 20 ms: RSS would count the page cache of a
memory-mapped split. Seconds are the epoch's own, from the stage's log (logs/<experiment>.json).
The targets: peak RssAnon at the largest size no more than 300 MiB above that at the smallest,
and seconds per epoch within 1.3x of linear in the image count.

    python bench/data_scale.py                       # both recipes, 60,000 / 250,000 / 1,000,000
    python bench/data_scale.py --sizes 6000 12000 --recipes twolayernet
    python bench/data_scale.py --device cuda
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from clone import env, fresh_clone  # bench/clone.py

RECIPES = {"twolayernet": "mnist_twolayernet", "cnn": "mnist_cnn"}  # recipe -> params.yaml experiment
N_TEST = 10_000
MEMORY_TARGET_MIB, LINEAR_TARGET = 300, 1.3


def write_dataset(repo: Path, paths: dict, name: str, n_train: int) -> None:
    """data/processed/<name>: n_train digits (4,000 distinct, replicated) then N_TEST test
    images from the other 1,000, through the clone's own prepare and store."""
    from torchrepro.download.sources import Mnist5kSource, Options, image_table
    from torchrepro.normalize import prepare, store

    raw = repo / paths["raw"] / "mnist-5k"
    raw.mkdir(parents=True, exist_ok=True)
    Mnist5kSource.fetch(Options(), raw)
    digits = Mnist5kSource.load(Options(), raw)
    order = np.random.default_rng(0).permutation(len(digits.y))  # the digits come sorted by label
    train, test = order[:4000], order[4000:]
    images = np.concatenate(
        [np.resize(digits.x[train], (n_train, 28, 28)), np.resize(digits.x[test], (N_TEST, 28, 28))]
    )
    labels = np.concatenate([np.resize(digits.y[train], n_train), np.resize(digits.y[test], N_TEST)])
    is_test = np.arange(len(labels)) >= n_train
    table = image_table(images, labels, raw, is_test)
    store.save(prepare.prepare(table, None, 0, "unit"), repo / paths["processed"] / name)


def use_dataset(repo: Path, name: str, experiments: list[str], device: str) -> dict:
    """Point the clone's experiments at dataset `name`, one epoch each; returns params.yaml's paths."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["device"] = device
    params["datasets"][name] = {"source": {"name": "mnist-5k"}, "normalize": "unit"}  # train reads only processed/
    for experiment in experiments:
        params["experiments"][experiment]["dataset"] = name
        params["experiments"][experiment]["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params["paths"]


def peak_rss_anon_mib(command: list[str], repo: Path) -> float:
    """Run a command to completion, polling its RssAnon; the maximum in MiB (or exit with an error)."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(
            command, cwd=repo, env=env(repo) | {"TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL, stderr=stderr
        )
        peak_kib = 0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                break
            for line in status.splitlines():
                if line.startswith("RssAnon:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))  # "RssAnon:  123456 kB"
            time.sleep(0.02)
        if proc.wait() != 0:
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            sys.exit(f"error: {' '.join(command)} failed: {' | '.join(tail)}")
    return peak_kib / 1024


def machine() -> str:
    """CPU model, core count, torch version and today's date, in one line."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    torch = importlib.metadata.version("torch")
    return f"{models[0] if models else 'unknown CPU'}, {os.cpu_count()} cores, torch {torch}, {datetime.date.today()}"


def measure(repo: Path, sizes: list[int], recipes: list[str], device: str) -> dict[str, list[tuple]]:
    """(size, split MiB, seconds per epoch, peak RssAnon MiB) per recipe, printing each row."""
    rows: dict[str, list[tuple]] = {recipe: [] for recipe in recipes}
    for n in sizes:
        name = f"scale-{n}"
        paths = use_dataset(repo, name, [RECIPES[r] for r in recipes], device)
        write_dataset(repo, paths, name, n)
        gc.collect()  # the arrays are gone before training starts
        processed = repo / paths["processed"] / name
        split_mib = sum(f.stat().st_size for f in processed.iterdir()) / 2**20
        for recipe in recipes:
            experiment = RECIPES[recipe]
            for stale in (repo / paths["resume"] / experiment, repo / paths["models"] / experiment):
                shutil.rmtree(stale, ignore_errors=True)  # train from scratch, never resume
            mib = peak_rss_anon_mib([sys.executable, "stages/train.py", experiment], repo)
            log = json.loads((repo / paths["logs"] / f"{experiment}.json").read_text())
            seconds = log["seconds_per_epoch"][0]  # the one epoch's training time, not the process's
            rows[recipe].append((n, split_mib, seconds, mib))
            above = mib - rows[recipe][0][3]
            print(f"{recipe:<12} {n:>12,} {split_mib:>14.0f} {seconds:>10.2f} {mib:>14.0f} {above:>14.0f}", flush=True)
        shutil.rmtree(processed)  # disk: the largest split is over 3 GiB
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[60_000, 250_000, 1_000_000], help="training images")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: %(default)s)")
    args = parser.parse_args()
    if any(n < 1 for n in args.sizes):
        sys.exit(f"error: --sizes must be positive image counts, got {' '.join(map(str, args.sizes))}")
    sizes = sorted(set(args.sizes))

    print(f"machine: {machine()}; device {args.device}; 1 epoch; test split {N_TEST:,} images")
    print(
        f"{'recipe':<12} {'train images':>12} {'split MiB':>14} {'s/epoch':>10} {'RssAnon MiB':>14} {'above smallest':>14}"
    )
    with tempfile.TemporaryDirectory(prefix="torchrepro-scale-") as tmp:
        repo = fresh_clone(Path(tmp))
        sys.path.insert(0, str(repo / "src"))  # write the store format the clone's train stage reads
        rows = measure(repo, sizes, args.recipes, args.device)

    for recipe, runs in rows.items():
        (n0, _, s0, m0), (n1, _, s1, m1) = runs[0], runs[-1]
        growth, linear = m1 - m0, (s1 / s0) / (n1 / n0) if s0 else float("nan")  # the log rounds to 0.1 ms
        print(
            f"{recipe}: RssAnon {n0:,} -> {n1:,} images: {growth:+.0f} MiB (target <= {MEMORY_TARGET_MIB}: "
            f"{'yes' if growth <= MEMORY_TARGET_MIB else 'NO'}); seconds against linear: {linear:.2f}x "
            f"(target <= {LINEAR_TARGET}x: {'yes' if linear <= LINEAR_TARGET else 'NO'})"
        )


if __name__ == "__main__":
    main()
