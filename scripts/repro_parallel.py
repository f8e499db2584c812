"""`dvc repro` with independent stages side by side: the same stages, results and dvc.lock.

DVC runs one stage at a time. It lets several `dvc repro` processes share a workspace as long
as their stages write disjoint outputs: each stage takes DVC's read/write locks on its deps and
outs (.dvc/tmp/rwlock), and the repo lock only while DVC records a stage, not while its command
runs (`--wait-for-lock` makes the others wait for it instead of failing). So the pipeline runs
in waves whose targets share nothing they write:

  1. validate (every stage reads its marker);
  2. each dataset's download and normalize, and the activations figure, side by side;
  3. each experiment's train, evaluate and plot, side by side (their datasets are done);
  4. `dvc repro`: the report, and a check that nothing else is left.

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


def wave(targets: list[str], jobs: int, force: list[str]) -> None:
    """`dvc repro <target>` for each target, `jobs` at a time; stop at the first failure."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda target: (target, dvc("repro", *force, target)), targets))
    failed = False
    for target, done in results:
        sys.stdout.write("".join(f"[{target}] {line}\n" for line in done.stdout.splitlines()))
        if done.returncode:
            sys.stderr.write(done.stderr)
            print(f"error: dvc repro {target} exited with {done.returncode}", file=sys.stderr)
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
    force = ["-s", "-f"] if args.force else []
    names = stage_names()

    def kind(prefix: str) -> list[str]:
        return [n for n in names if n.startswith(prefix + "@")]

    if args.force:  # with -s each wave names every stage it runs, upstream ones included
        waves = [["validate"], kind("download"), [*kind("normalize"), "activations"], kind("train")]
        waves += [kind("evaluate"), kind("plot"), ["report"]]
    else:
        waves = [["validate"], [*kind("normalize"), "activations"], kind("plot"), []]
    for targets in waves:
        if targets:
            wave(targets, args.jobs, force)
    if not args.force:  # the report, and what any wave did not reach
        wave(["dvc.yaml"], 1, [])


if __name__ == "__main__":
    main()
