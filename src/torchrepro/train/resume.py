"""Resume checkpoints: survive a killed training run and finish with the same result.

One file per (experiment, params, data) fingerprint under .resume/<experiment>/, outside
every DVC output so DVC's run-cache keeps working. Written atomically at the end of an
epoch, the last epoch included: a kill after training but before DVC records the stage
costs nothing, since the next run writes the outputs from the final checkpoint.

A run of more epochs that is otherwise the same (the same lineage: every fingerprint key but
the epoch count, the schedule's settings included) goes through the same states epoch by
epoch, so with no checkpoint of its own it continues the longest shorter run's last one and
ends with the bytes of a run from scratch: raising `epochs` trains only the epochs added.

A finished checkpoint is used only while it is newer than dvc.lock: DVC rewrites dvc.lock
each time it records a stage, even to the same content, so once it has recorded the run, a
rerun (`dvc repro -f` above all) trains again. Any other write of dvc.lock since (another
stage's record, a git checkout) costs a retrain too, which is always safe; skipping a
training that was asked for is not. A forced run of this stage alone (`-f -s`) right after a
run DVC never recorded is the one case that still uses the checkpoint: nothing tells them apart.

A file is a header line (JSON: format, SHA-256 of the rest, fingerprint, epoch) and a
torch.save archive. torch does not check its archive's CRCs, so the digest is what catches
damage; a damaged or mismatched checkpoint is ignored with a warning and training starts
over. Checkpoints nobody can use any more are removed: damaged ones, those of another torch
version or snapshot layout, finished ones of other params (DVC's run-cache holds their
results) unless this run continues them, and all but the newest few of the others.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from torchrepro.core.errors import DataError, ParamsError, warn
from torchrepro.core.io import bytes_digest, json_digest, write_bytes
from torchrepro.models.checkpoint import safe_load, to_bytes

FORMAT = "torchrepro-resume"
# Seconds between resume checkpoints, from the environment: it cannot change results, so it is
# no DVC param (editing it reruns nothing). 0: at the end of every epoch.
INTERVAL_ENV = "TORCHREPRO_CHECKPOINT_EVERY_S"
KEEP_OTHERS = 3  # checkpoints of other params kept for a return to them or a longer run


def interval_from_env() -> float:
    """TORCHREPRO_CHECKPOINT_EVERY_S as seconds (0 when unset)."""
    text = os.environ.get(INTERVAL_ENV, "0")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise ParamsError(f"{INTERVAL_ENV}={text!r}: expected seconds, a number >= 0")
    return seconds


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and the archive bytes of a checkpoint file, digest checked."""
    line, newline, payload = path.read_bytes().partition(b"\n")
    header = _parse_header(line)
    if not newline or header.get("format") != FORMAT:
        raise DataError(f"{path}: not a resume checkpoint")
    if header.get("sha256") != bytes_digest(payload):
        raise DataError(f"{path}: damaged: its SHA-256 does not match its header")
    return header, payload


class ResumeStore:
    """Save, find and tidy the resume checkpoints of one experiment."""

    def __init__(
        self,
        directory: str | Path,
        fingerprint: dict[str, Any],
        epochs: int,
        every_s: float = 0.0,
        lock_file: str | Path = "dvc.lock",
        lineage: dict[str, Any] | None = None,
    ):
        """`lineage`: what a shorter run must share with this one for this one to continue it
        (see the module's docstring); None: continue no other run."""
        self.directory = Path(directory)
        self.lock_file = Path(lock_file)  # DVC's record, beside dvc.yaml, where DVC runs the stage
        # As plain JSON data: a str subclass such as torch.__version__ (TorchVersion) would be
        # pickled as its class, and weights_only loading then refuses the whole checkpoint.
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.path = self.directory / f"{json_digest(self.fingerprint)[:16]}.pt"
        self.lineage = None if lineage is None else json_digest(lineage)
        self.epochs = epochs
        self.every_s = every_s
        self.loaded_from: Path | None = None  # the file load() took its state from
        self._last_save = time.monotonic()

    def load(self, tidy: bool = True) -> dict[str, Any] | None:
        """The matching checkpoint's state, or None (with a warning when one is ignored).
        `tidy`: also remove what nobody can use; one rank of several alone does it and warns."""
        if tidy:
            self._tidy()
        if not self.path.exists():
            return self._shorter_run()
        try:
            header, payload = read_header(self.path)
            state = safe_load(self.path, data=payload)
        except (DataError, FileNotFoundError) as error:  # not found: another rank removed it
            if tidy:
                warn(f"ignoring resume checkpoint: {error}; starting over")
                self.path.unlink(missing_ok=True)
            return None
        if header.get("fingerprint") != self.fingerprint or not isinstance(state, dict):
            if tidy:
                warn(f"ignoring resume checkpoint {self.path}: its fingerprint does not match; starting over")
            return None
        if header.get("epoch") == self.epochs and self._recorded():
            return None  # DVC has this run: training again is what was asked for
        self.loaded_from = self.path
        return state

    def _shorter_run(self) -> dict[str, Any] | None:
        """The state of the longest shorter run of this lineage, at its last checkpoint, or None.
        Chosen by the header lines alone: only the chosen file is read whole."""
        candidates = [(header["epoch"], p) for p in self._others() if self._continues(header := _header_line(p))]
        if not candidates:
            return None
        best = max(candidates)[1]
        try:
            _, payload = read_header(best)
            state = safe_load(best, data=payload)
        except (DataError, OSError) as error:
            warn(f"ignoring resume checkpoint: {error}; starting over")
            return None
        self.loaded_from = best
        return state if isinstance(state, dict) else None

    def _continues(self, header: dict[str, Any]) -> bool:
        """Whether this run can continue the checkpoint of that header: a shorter run of its lineage."""
        epoch = header.get("epoch")
        return (
            self.lineage is not None
            and header.get("lineage") == self.lineage
            and type(epoch) is int
            and epoch < self.epochs
        )

    def _others(self) -> list[Path]:
        return [p for p in self.directory.glob("*.pt") if p != self.path]

    def _recorded(self) -> bool:
        """Whether dvc.lock was written since the checkpoint was: DVC may have recorded its run.
        Equal times count as written since (a coarse clock cannot order them)."""
        try:
            lock = self.lock_file.stat().st_mtime_ns
        except FileNotFoundError:
            return False  # no DVC record at all: a stage run by hand, or DVC's first run
        return lock >= self.path.stat().st_mtime_ns

    def _tidy(self) -> None:
        """Remove the other checkpoints that no run can use any more."""
        kept = []
        for other in self._others():
            try:
                header, _ = read_header(other)
            except (DataError, OSError) as error:
                warn(f"removing resume checkpoint: {error}")
                other.unlink(missing_ok=True)
                continue
            theirs = header.get("fingerprint", {})
            stale = any(theirs.get(k) != self.fingerprint.get(k) for k in ("torch", "snapshot"))
            if stale or (header.get("epoch") == header.get("epochs") and not self._continues(header)):
                other.unlink(missing_ok=True)
            else:
                kept.append(other)
        for old in sorted(kept, key=lambda p: p.stat().st_mtime)[:-KEEP_OTHERS]:
            old.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], epoch: int) -> bool:
        """Write the state atomically: at the last epoch always, else unless less than every_s
        seconds passed since the last write."""
        final = epoch == self.epochs
        if not final and self.every_s and time.monotonic() - self._last_save < self.every_s:
            return False
        payload = to_bytes(state)
        header = {
            "format": FORMAT,
            "sha256": bytes_digest(payload),
            "fingerprint": self.fingerprint,
            "lineage": self.lineage,
            "epoch": epoch,
            "epochs": self.epochs,
        }
        write_bytes(self.path, json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
        self._last_save = time.monotonic()
        return True


def _header_line(path: Path) -> dict[str, Any]:
    """A checkpoint's header, unchecked ({} where there is none): enough to choose one by."""
    try:
        with path.open("rb") as file:
            return _parse_header(file.readline())
    except OSError:
        return {}


def _parse_header(line: bytes) -> dict[str, Any]:
    """A checkpoint's first line as its header; {} where it is not a JSON object."""
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return header if isinstance(header, dict) else {}
