"""Push to a DVC remote the outputs of every run the run-cache records, not only the workspace's.

`dvc push --run-cache` sends every run record in .dvc/cache/runs, but outputs only for the
workspace (and for the revisions named with --rev, -a, -T or -A). A clone that pulls the records
can then not restore a run made elsewhere, such as an experiment that was never applied, and
runs its stages again. This command also sends the outputs those records name, through DVC's
own API, so that a clone restores such a run instead:

    dvc push --run-cache                     # the run records (and the workspace's outputs)
    python scripts/push_run_outputs.py       # the outputs of every recorded run
    # in a clone:
    dvc pull --run-cache
    dvc exp run --pull -S <the run's params>  # "Stage '...' is cached - skipping run"

With --check-sizes it first compares the size of each of those objects on the remote with the
local copy and sends again every one that differs. An upload cut off midway can leave a short
object on a server that writes in place (WsgiDAV's WebDAV does), and `dvc push` counts any
object that exists as complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_records(repo) -> list[tuple[str, str]]:
    """Every run record in the local cache, as DVC names them: (stage key, run value)."""
    runs = Path(repo.stage_cache.cache_dir)  # runs/<key[:2]>/<key>/<value>
    return sorted((path.parent.name, path.name) for path in runs.glob("*/*/*") if path.is_file())


def outputs_to_share(repo, records: list[tuple[str, str]]) -> set:
    """HashInfos of the workspace's outputs and of every output the records name."""
    used = repo.used_objs(used_run_cache=records, push=True)
    return {hash_info for objs in used.values() for hash_info in objs}


def _files(repo, hash_infos: set):
    """(HashInfo, local ODB) of each object, directories expanded into their files."""
    from dvc_data.hashfile.tree import Tree

    for hash_info in hash_infos:
        cache = repo.cache.legacy if hash_info.name == "md5-dos2unix" else repo.cache.local
        yield hash_info, cache
        if hash_info.isdir:
            for _, _, child in Tree.load(cache, hash_info):
                yield child, cache


def resend_short_objects(repo, hash_infos: set, remote: str | None) -> int:
    """Upload again each object whose size on the remote differs from the local copy."""
    resent = 0
    for hash_info, cache in _files(repo, hash_infos):
        odb = repo.cloud.get_remote_odb(remote, "push", hash_name=hash_info.name)
        local, there = cache.oid_to_path(hash_info.value), odb.oid_to_path(hash_info.value)
        try:
            short = odb.fs.size(there) != cache.fs.size(local)
        except FileNotFoundError:
            continue  # missing on the remote (the push sends it) or here (nothing to send)
        if short:
            # `add` skips objects that exist; this one exists but is wrong
            odb.add(local, cache.fs, hash_info.value, check_exists=False)
            resent += 1
    return resent


def push_run_outputs(remote: str | None = None, jobs: int | None = None, check_sizes: bool = False) -> str:
    """Push the outputs of the workspace and of every run record to `remote` (default: the
    project's default remote); return a one-line summary. Raises on any failed upload."""
    from dvc.repo import Repo

    with Repo() as repo:
        name = repo.cloud.get_remote(remote, "push").name  # fails now if there is none
        records = run_records(repo)
        hash_infos = outputs_to_share(repo, records)
        resent = resend_short_objects(repo, hash_infos, name) if check_sizes else 0
        result = repo.cloud.push(hash_infos, jobs=jobs, remote=name)
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} objects failed to upload to remote '{name}'")
    summary = f"{len(result.transferred)} objects pushed to remote '{name}'"
    if check_sizes:
        summary += f", {resent} found short there and sent again"
    return f"{summary} (outputs of {len(records)} run records and the workspace)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/push_run_outputs.py",
        description=__doc__.split("\n\n")[0],
        epilog="Run it from the project's root, after `dvc push --run-cache`.",
    )
    parser.add_argument("-r", "--remote", help="the DVC remote to push to (default: core.remote)")
    parser.add_argument("-j", "--jobs", type=int, help="parallel uploads (default: DVC's)")
    parser.add_argument(
        "--check-sizes", action="store_true",
        help="send again every object whose size on the remote differs from the local copy",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        print(push_run_outputs(args.remote, args.jobs, args.check_sizes))
    except Exception as exc:
        print("error:", " ".join(str(exc).split()), file=sys.stderr)  # DVC's hints span lines
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
