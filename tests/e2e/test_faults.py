"""A disk that fills up during `dvc repro`: one clear line from the stage, and afterwards the
previous outputs come back from the DVC cache, which the failure left untouched.

The repo lives on a real tmpfs, filled with a ballast file until a few hundred KiB are left:
enough for DVC's own bookkeeping and the validate stage, not for the resume checkpoint the
train stage writes at the end of its first epoch. Skipped where no tmpfs can be mounted.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess

import pytest

from .test_bad_input import error_lines

LEFT_FREE = 384 << 10  # bytes: DVC's locks and the small files of validate and dvclive fit; 800 KiB do not
OUTPUTS = ("models/iris_mlp/model.pt", "models/iris_mlp/model.json", "logs/iris_mlp.json")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the full-disk case needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill_leaving(folder, left: int) -> None:
    """Fill folder's file system until `left` bytes remain free."""
    with open(folder / "ballast", "wb") as ballast:
        while (free := shutil.disk_usage(folder).free) > left:
            try:
                ballast.write(b"\0" * min(1 << 20, free - left))
                ballast.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break


def cache_files(repo) -> dict[str, str]:
    cache = repo / ".dvc" / "cache"
    return {
        str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest() for p in cache.rglob("*") if p.is_file()
    }


@pytest.mark.slow  # tests/test_faults.py fills the disk under the train stage's process by default
def test_a_full_disk_during_training_loses_nothing(reproduced, small_disk):
    repo = reproduced.copy(small_disk / "repo")
    cache_before = cache_files(repo)
    # A wider model: its resume checkpoint (weights and Adam's two moments, ~800 KiB) does not fit.
    repo.set_param("experiments.iris_mlp.model.hidden_sizes", [256, 256])
    fill_leaving(small_disk, LEFT_FREE)

    result = repo.dvc("repro", check=False)

    assert result.returncode != 0
    assert "train@iris_mlp" in repo.ran(result.output)
    [line] = error_lines(result.stderr)
    assert ".resume/iris_mlp/" in line and "no space left on the device (" in line, line
    assert "free some space and run again" in line
    assert "Traceback" not in result.output
    assert not list(repo.root.rglob("*.tmp")), "a temporary file was left behind"

    # Free the space, undo the edit (validate ran with it, so dvc.lock records it too): the
    # previous outputs come back from the cache and DVC sees nothing to do.
    (small_disk / "ballast").unlink()
    repo.git("checkout", "--", "params.yaml", "dvc.lock", "metrics")
    repo.dvc("checkout")
    assert repo.dvc_json("status") == {}
    for rel in OUTPUTS:
        assert repo.digest(rel) == reproduced.digest(rel), rel
    cache_after = cache_files(repo)
    assert {k: cache_after.get(k) for k in cache_before} == cache_before  # nothing changed or removed
    # Added: only validate's run-cache entry (it ran, with the edited params, and succeeded).
    assert all(k.startswith("runs/") for k in set(cache_after) - set(cache_before))
    assert repo.git("status", "--porcelain").stdout == ""
