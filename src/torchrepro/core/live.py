"""dvclive as the pipeline's metrics writer, and the previous metrics kept when a run fails."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from torchrepro.core.errors import warn
from torchrepro.core.io import atomic_dir

# dvclive's next_step rewrites metrics.json and fsyncs a step marker for DVC's VS Code extension:
# about 5 ms on ext4 under load, more than an epoch of a small model. Once a second keeps
# `dvc exp show` and the extension live; the TSV rows are still appended every step.
SYNC_EVERY_S = 1.0


def open_live(directory: str | Path, sync_every_s: float = SYNC_EVERY_S) -> Any:
    """dvclive for a pipeline stage. DVC already tracks the files (they are declared in
    dvc.yaml), so dvclive writes no dvc.yaml, saves no experiment and makes no report."""
    return DeferredLive(directory, sync_every_s)


class DeferredLive:
    """dvclive's Live, opened on first use. Opening clears the previous run's files, so a run
    that fails before it logs anything (data that does not load, a loss that is NaN in the
    first epoch) leaves the previous metrics as they were.

    next_step syncs (dvclive's own next_step) on the first step and then at most every
    `sync_every_s`; the other steps only advance the step. end() first syncs the last step,
    so the files end as dvclive's next_step on every step leaves them."""

    def __init__(self, directory: str | Path, sync_every_s: float = SYNC_EVERY_S):
        state = {"_directory": directory, "_live": None, "_every": sync_every_s, "_synced_at": None, "_behind": False}
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def _open(self) -> Any:
        if self._live is None:
            from dvclive import Live  # imports part of DVC: only the stages that log pay for it

            object.__setattr__(
                self, "_live", Live(dir=str(self._directory), dvcyaml=None, save_dvc_exp=False, report=None)
            )
        return self._live

    def next_step(self) -> None:
        live, now = self._open(), time.monotonic()
        if self._synced_at is None or now - self._synced_at >= self._every:
            live.next_step()
            object.__setattr__(self, "_synced_at", now)
            object.__setattr__(self, "_behind", False)
        else:
            live.step += 1
            object.__setattr__(self, "_behind", True)

    def end(self) -> None:
        live = self._open()
        if self._behind:  # the last step as next_step would have left it, then dvclive's end
            live.step -= 1
            live.next_step()
            object.__setattr__(self, "_behind", False)
        live.end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._open(), name, value)


@contextlib.contextmanager
def restored_on_failure(directory: str | Path) -> Iterator[None]:
    """Put `directory`'s files back as they were if the block fails, so that a failed run
    leaves the git-tracked metrics as they were, not rewritten with its own epochs; dvclive
    still writes in place while the run goes on (`dvc exp show` reads the files live).

    DVC removes a stage's outputs, `cache: false` ones too, before it runs the stage: under
    DVC the previous files include those dvc.lock records, read back from DVC's cache."""
    directory = Path(directory)
    before = _read_files(directory)
    try:
        yield
    except BaseException:
        try:
            _put_back(directory, recorded_by_dvc(directory) | before)
        except OSError as error:  # the run's own error is the one to report
            warn(f"{directory}: the previous files could not be put back ({error})")
        raise


def _read_files(directory: Path) -> dict[str, bytes]:
    """{path relative to `directory`: content} of every file in it (dvclive's: a few kB)."""
    if not directory.is_dir():
        return {}
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _put_back(directory: Path, files: dict[str, bytes]) -> None:
    """Make `directory` hold exactly `files`, in one swap (atomic_dir): never half of them."""
    if not files:
        shutil.rmtree(directory, ignore_errors=True)
        return
    with atomic_dir(directory) as tmp:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def recorded_by_dvc(directory: Path) -> dict[str, bytes]:
    """The files under `directory` that dvc.lock records for the stage DVC is running (DVC
    names it in DVC_STAGE), from DVC's cache, each checked against its MD5. {} when DVC is not
    running a stage or has recorded none there; a warning when its cache lacks them."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return {}
    try:
        outs = yaml.safe_load(Path("dvc.lock").read_text())["stages"][stage]["outs"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):  # nothing recorded for this stage yet
        return {}
    where = _absolute(directory)
    inside = [out for out in outs if where == _absolute(out["path"]) or where in _absolute(out["path"]).parents]
    try:
        return _from_cache(inside, where)
    except Exception as error:  # the run failed already: say how to get the files back, go on
        warn(
            f"{directory}: DVC removed the previous files before the run and its cache does not hold "
            f"them ({error}); `git checkout -- {directory}` restores the committed ones"
        )
        return {}


def _from_cache(outs: list[dict[str, Any]], where: Path) -> dict[str, bytes]:
    """The files of dvc.lock's `outs` entries, relative to `where`, from DVC's local cache."""
    from dvc.repo import Repo  # only on this failure path: DVC knows where its cache is

    with Repo() as repo:
        cache = repo.cache.local

        def read(md5: str) -> bytes:
            data = Path(cache.oid_to_path(md5)).read_bytes()
            if hashlib.md5(data).hexdigest() != md5.removesuffix(".dir"):
                raise ValueError(f"the cached object {md5} is damaged")
            return data

        files = {}
        for out in outs:
            base = _absolute(out["path"]).relative_to(where)
            if out["md5"].endswith(".dir"):  # a folder: its listing, then each file
                for entry in json.loads(read(out["md5"])):
                    files[(base / entry["relpath"]).as_posix()] = read(entry["md5"])
            else:
                files[base.as_posix()] = read(out["md5"])
        return files
