"""Real file-system faults while a stage writes: a full disk, a read-only folder, a permission
error. Each is produced for real (a small tmpfs filled to the last byte, a read-only bind
mount, a process that is subject to file modes), never mocked; where the host cannot produce
one, its test is skipped and says why.

Each stage runs as a real process (`python stages/X.py ...`, all started together) and must
end with exit status 2 and one `error:` line naming the path and what to free or fix, with no
traceback, and leave the previous outputs as they were and still loadable. tests/e2e/test_faults.py
does the same under `dvc repro` and checks the DVC cache.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from torchrepro.models.checkpoint import load_model
from torchrepro.normalize import store

from conftest import ROOT
from test_fuzz import PROGRESS, build_project, snapshot

# Root's capabilities that let it ignore file modes; without them, uid 0 is held to the modes
# like any user (the owner bits, for files root owns).
MODE_OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def mount(*args: str) -> str | None:
    """Run mount(8); None on success, else why it failed."""
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited with {done.returncode}")


def fill(folder: Path) -> None:
    """Write to `folder`'s file system until it is full: a real ENOSPC is what comes next."""
    with open(folder / ".ballast", "wb") as ballast:
        chunk = b"\0" * (64 << 10)
        try:
            while True:
                ballast.write(chunk)
                ballast.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    for size in (4096, 512, 1):  # the last partial pages
        try:
            with open(folder / ".ballast", "ab") as ballast:
                while True:
                    ballast.write(b"\0" * size)
                    ballast.flush()
        except OSError:
            pass


def on_full_tmpfs(root: Path, rel: str, mounted: list[Path]) -> str | None:
    """Move `rel` (the previous outputs in it) onto a fresh 1 MiB tmpfs, then fill it up."""
    folder, saved = root / rel, root / f"{rel}.saved"
    folder.rename(saved)
    folder.mkdir()
    if (why := mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(folder))) is not None:
        folder.rmdir()
        saved.rename(folder)
        return why
    mounted.append(folder)
    shutil.copytree(saved, folder, dirs_exist_ok=True)
    shutil.rmtree(saved)
    fill(folder)
    return None


def read_only(root: Path, rel: str, mounted: list[Path]) -> str | None:
    folder = root / rel
    if (why := mount("--bind", str(folder), str(folder))) is not None:
        return why
    mounted.append(folder)
    return mount("-o", "remount,bind,ro", str(folder))


def subject_to_modes() -> list[str] | None:
    """The command prefix that makes a process obey file modes, [] when it already does (not
    root), None when it cannot be had here."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, f"--bounding-set={MODE_OVERRIDES}", "--", "true"], capture_output=True)
    return [setpriv, f"--bounding-set={MODE_OVERRIDES}", "--"] if probe.returncode == 0 else None


@dataclass
class Fault:
    argv: list[str]
    says: list[str]  # what the one error line must contain
    kept: list[str]  # previous outputs that must be unchanged


FAULTS = {
    # np.savez writes the arrays into the temporary folder; the disk fills on the first one.
    "full-disk-normalize": Fault(
        ["stages/normalize.py", "blobs"], ["processed/blobs", "no space left on the device (0 B free)"], ["processed"]
    ),
    # Training runs to the end; writing model.pt (beside model.json, as one folder) fails.
    "full-disk-train": Fault(
        ["stages/train.py", "blobs_mlp"],
        ["models/blobs_mlp/model.pt: no space left on the device (0 B free); free some space"],
        ["models"],
    ),
    "read-only-evaluate": Fault(
        ["stages/evaluate.py", "blobs_mlp"], ["predictions/blobs_mlp.csv: read-only file system"], ["."]
    ),
    "permission-plot": Fault(
        ["stages/plot.py", "blobs_mlp"], ["plots/blobs_mlp: permission denied; fix the permissions"], ["."]
    ),
    "permission-params": Fault(
        ["stages/train.py", "blobs_mlp"], ["params.yaml: cannot read", "Permission denied"], ["."]
    ),
}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Each fault made for real in its own copy of the project, its stage started; all at once."""
    pristine = build_project(tmp_path_factory.mktemp("faults") / "project")
    mounted: list[Path] = []
    runs, skipped = {}, {}
    try:
        for name, fault in FAULTS.items():
            root = tmp_path_factory.mktemp(name) / "project"
            shutil.copytree(pristine, root, symlinks=True)
            prefix: list[str] = []
            why = None
            if name.startswith("full-disk"):
                why = on_full_tmpfs(root, fault.kept[0], mounted)
                why = why and f"cannot mount a tmpfs here ({why}); the full-disk case needs root"
            elif name.startswith("read-only"):
                why = read_only(root, "predictions", mounted)
                why = why and f"cannot make a read-only bind mount here ({why}); it needs root"
            else:
                prefix = subject_to_modes()
                if prefix is None:
                    why = "running as root without setpriv(1): no process here is subject to file modes"
                elif name == "permission-plot":
                    (root / "plots").chmod(0o555)
                    (root / "plots" / "blobs_mlp").chmod(0o555)
                else:
                    (root / "params.yaml").chmod(0o000)
            if why:
                skipped[name] = why
                continue
            before = {rel: snapshot(root / rel) for rel in fault.kept}
            command = [*prefix, sys.executable, str(ROOT / fault.argv[0]), *fault.argv[1:]]
            process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            runs[name] = (process, root, before)
        results = {
            name: (*p.communicate(timeout=300), p.returncode, root, before) for name, (p, root, before) in runs.items()
        }
        yield results, skipped
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        for name in FAULTS:
            for path in tmp_path_factory.getbasetemp().glob(f"{name}*/project"):
                for rel in ("plots", "plots/blobs_mlp", "params.yaml"):
                    if (path / rel).exists():
                        (path / rel).chmod(0o755)  # so that pytest can remove its temporary folders


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_is_one_error_line_and_the_previous_outputs_stay_usable(faults, name):
    results, skipped = faults
    if name in skipped:
        pytest.skip(skipped[name])
    out, err, code, root, before = results[name]
    fault = FAULTS[name]
    assert code == 2, err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("error: ") and all(s in line for s in fault.says), line
    assert [x for x in err.splitlines() if x.strip() and x != line and not PROGRESS.match(x)] == [], err
    for rel, files in before.items():
        now = snapshot(root / rel)
        assert {k: v for k, v in now.items() if k != ".ballast"} == {k: v for k, v in files.items() if k != ".ballast"}
    assert not list(root.rglob("*.tmp")), "a temporary file was left behind"
    if name == "full-disk-normalize":
        assert len(store.load(root / "processed" / "blobs").y_train) == 63
    if name == "full-disk-train":
        model, info = load_model(root / "models" / "blobs_mlp")
        assert info["experiment"] == "blobs_mlp"
