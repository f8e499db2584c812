"""core.io: atomic writes of files and folders, killed at their worst moments, and the
temporaries killed writers leave, removed by the next write of the same target."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from torchrepro.core import io
from torchrepro.core.io import atomic_dir, atomic_path, write_text

OLD = {"a.txt": "old a", "sub/b.txt": "old b"}
NEW = {"a.txt": "new a", "sub/b.txt": "new b", "c.txt": "new c"}

# Writes NEW into `target` with atomic_dir, and SIGKILLs itself just before the n-th call to
# `os.replace` (or to shutil.rmtree, for "rmtree"): no cleanup, no finally, as a real kill.
KILLED_WRITER = """
import json, os, shutil, signal, sys
from pathlib import Path
from torchrepro.core.io import atomic_dir

target, when, files = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
calls = {"replace": 0}

def dying(real, name):
    def call(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        if when == f"{name}{calls[name]}":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

os.replace = dying(os.replace, "replace")
shutil.rmtree = dying(shutil.rmtree, "rmtree")
with atomic_dir(target) as tmp:
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
"""


def write_folder(folder, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def read_folder(folder) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}


def temporaries(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".tmp"))


def test_atomic_dir_replaces_the_folder_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model"
    write_folder(target, OLD)
    with atomic_dir(target) as tmp:
        write_folder(tmp, NEW)
        assert read_folder(target) == OLD  # untouched until the block succeeds
    assert read_folder(target) == NEW and temporaries(tmp_path) == []


def test_a_failing_block_leaves_the_old_folder(tmp_path):
    target = tmp_path / "model"
    write_folder(target, OLD)
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        write_folder(tmp, NEW)
        raise RuntimeError("disk full")
    assert read_folder(target) == OLD and temporaries(tmp_path) == []


# Each moment of the swap: before the old folder is renamed aside (replace1), between the two
# renames (replace2, the worst), before the aside folder is renamed for removal (replace3),
# during its removal (rmtree1).
@pytest.mark.parametrize("when", ["replace1", "replace2", "replace3", "rmtree1"])
def test_a_writer_killed_during_the_swap_leaves_a_complete_folder(tmp_path, when):
    target = tmp_path / "model"
    write_folder(target, OLD)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(target), when, json.dumps(NEW)], capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()

    # At the kill: the old folder in place or aside, or the new one in place; never part of one.
    asides = [p for p in tmp_path.iterdir() if p.name.endswith(io.ASIDE)]
    complete = {"replace1": OLD, "replace2": None, "replace3": NEW, "rmtree1": NEW}[when]
    assert read_folder(target) == complete
    if when == "replace2":
        assert [read_folder(p) for p in asides] == [OLD]
    assert temporaries(tmp_path)  # what the killed writer left

    # The next writer fails: the folder it finds in place, the old one put back, stays.
    with pytest.raises(RuntimeError), atomic_dir(target):
        raise RuntimeError("the next run fails too")
    assert read_folder(target) == (OLD if when in ("replace1", "replace2") else NEW)
    assert temporaries(tmp_path) == []  # the killed writer's temporaries are gone

    with atomic_dir(target) as tmp:
        write_folder(tmp, {"d.txt": "next"})
    assert read_folder(target) == {"d.txt": "next"} and temporaries(tmp_path) == []


def test_the_next_write_of_a_target_removes_its_stale_temporaries_only(tmp_path):
    (tmp_path / ".summary.csv.k1ll3d.tmp").write_text("half a table")
    (tmp_path / ".model.k1ll3d.tmp").mkdir()
    (tmp_path / ".model.k1ll3d.tmp" / "model.pt").write_bytes(b"half a model")
    (tmp_path / ".summary.md.k1ll3d.tmp").write_text("another target's")
    (tmp_path / ".model-b.k1ll3d.tmp").mkdir()  # another folder's: `.model.*` must not match it
    write_text(tmp_path / "summary.csv", "a,b\n")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "model.pt").write_bytes(b"model")
    assert temporaries(tmp_path) == [".model-b.k1ll3d.tmp", ".summary.md.k1ll3d.tmp"]


def test_a_name_with_glob_characters_matches_only_itself(tmp_path):
    (tmp_path / ".a[1].json.k1ll3d.tmp").write_text("stale")
    (tmp_path / ".a1.json.k1ll3d.tmp").write_text("another target's")
    write_text(tmp_path / "a[1].json", "{}")
    assert temporaries(tmp_path) == [".a1.json.k1ll3d.tmp"]


def test_a_temporary_a_live_writer_holds_is_left_alone(tmp_path):
    """Another write of the same target while one is under way (here in the same process: a
    lock is per open file, not per process) removes nothing of the first one's."""
    target = tmp_path / "out.txt"
    with atomic_path(target) as first:
        first.write_text("first")
        write_text(target, "second")
        assert first.read_text() == "first"
    assert target.read_text() == "first" and temporaries(tmp_path) == []

    folder = tmp_path / "model"
    with atomic_dir(folder) as first:
        write_folder(first, OLD)
        with atomic_dir(folder) as second:
            write_folder(second, NEW)
        assert read_folder(first) == OLD
    assert read_folder(folder) == OLD and temporaries(tmp_path) == []


def test_a_stale_temporary_from_a_killed_file_writer_is_removed(tmp_path):
    """A real writer killed with SIGKILL inside the block: its temporary stays, unlocked."""
    target = tmp_path / "table.csv"
    script = (
        "import os, signal, sys\n"
        "from torchrepro.core.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert len(temporaries(tmp_path)) == 1 and not target.exists()
    write_text(target, "whole")
    assert target.read_text() == "whole" and temporaries(tmp_path) == []


def test_atomic_dir_replaces_a_file_the_same_way(tmp_path):
    target = tmp_path / "model"
    target.write_text("a file where the folder goes")
    with atomic_dir(target) as tmp:
        write_folder(tmp, NEW)
    assert read_folder(target) == NEW and temporaries(tmp_path) == []


def test_results_get_the_usual_modes(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_text(tmp_path / "f.txt", "x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_rounded_to_significant_digits_or_decimal_places():
    assert io.rounded(12.3456789) == 12.3457 and io.rounded(0.000123456789) == 0.000123457
    assert io.rounded(12.3456789, significant=False) == 12.345679
    assert io.rounded(0.000123456789, significant=False) == 0.000123


def test_rounded_to_decimal_places_is_pythons_round():
    """What the evaluate stage wrote before with round(): the same floats, so the same bytes."""
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.uniform(-20, 20, 20_000), rng.standard_normal(20_000) * 10.0 ** rng.integers(-9, 9, 20_000)]
    )
    for value in map(float, values):
        assert io.rounded(value, 6, significant=False) == round(value, 6), value
