"""`dvc repro` with independent stages side by side: the same stages, results and dvc.lock.

DVC runs one stage at a time. It lets several `dvc repro` processes share a workspace as long
as their stages write disjoint outputs: each stage takes DVC's read/write locks on its deps and
outs (.dvc/tmp/rwlock), and the repo lock only while DVC records a stage, not while its command
runs (`--wait-for-lock` makes the others wait for it instead of failing). A stage DVC skips as
unchanged takes the write lock on its outs too, so no process may pass through a stage another
one needs: each names its own stages with --single-item (DVC runs them in the order given),
in waves whose stages share nothing they write:

  1. validate (every stage reads its marker);
  2. each dataset's download and normalize, and the activations figure, side by side;
  3. each experiment's train, evaluate and plot, side by side (their datasets are done);
  4. the report, then `dvc repro`: a stage none of the waves names runs here, and nothing else.

    python scripts/repro_parallel.py [--jobs N] [-f]    (make repro-parallel [JOBS=N])

Each stage's own threads are unchanged (`determinism: portable` fixes them), so the bytes are
the sequential run's. OMP_WAIT_POLICY=passive lets a waiting OpenMP thread sleep rather than
spin on a core another stage needs; it changes no result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def dvc(*args: str) -> subprocess.CompletedProcess:
    """A dvc command that waits for DVC's repo lock; its output goes through, prefixed."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    return subprocess.run(["dvc", "--wait-for-lock", *args], env=env, capture_output=True, text=True)


def stage_names() -> list[str]:
    listed = subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True, text=True)
    if listed.returncode:
        sys.exit(f"error: dvc stage list failed: {listed.stderr.strip()}")
    return listed.stdout.split()


def wave(chains: list[list[str]], jobs: int, force: list[str], single_item: bool = True) -> None:
    """`dvc repro --single-item <its stages>` for each chain, `jobs` at a time; exit on a failure."""
    options = [*force, "--single-item"] if single_item else force

    def repro(chain: list[str]) -> tuple[str, subprocess.CompletedProcess]:
        return " ".join(chain), dvc("repro", *options, *chain)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(repro, chains))
    failed = False
    for label, done in results:
        sys.stdout.write("".join(f"[{label}] {line}\n" for line in done.stdout.splitlines()))
        if done.returncode:
            sys.stderr.write(done.stderr)
            print(f"error: dvc repro {label} exited with {done.returncode}", file=sys.stderr)
            failed = True
    if failed:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at once (default: cores)")
    parser.add_argument("-f", "--force", action="store_true", help="run every stage, as `dvc repro -f`")
    args = parser.parse_args()
    if args.jobs < 1:
        sys.exit(f"error: --jobs must be at least 1 (got {args.jobs})")
    force = ["-f"] if args.force else []
    names = stage_names()

    def chains(*kinds: str) -> list[list[str]]:
        """[kind@key for each kind] for each key of the first kind's foreach."""
        keys = [n.split("@", 1)[1] for n in names if n.startswith(kinds[0] + "@")]
        return [[f"{kind}@{key}" for kind in kinds if f"{kind}@{key}" in names] for key in keys]

    waves = [[["validate"]], [*chains("download", "normalize"), ["activations"]], chains("train", "evaluate", "plot")]
    for chains_of_wave in [*waves, [["report"]]]:
        wave(chains_of_wave, args.jobs, force)
    wave([["dvc.yaml"]], 1, [], single_item=False)


if __name__ == "__main__":
    main()
