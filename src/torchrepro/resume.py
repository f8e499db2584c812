"""Resume checkpoints: survive a killed training run and finish with the same result.

One file per (experiment, params, data) fingerprint under .resume/<experiment>/,
outside every DVC output so DVC's run-cache keeps working. Written atomically at
the end of an epoch; removed when training completes. A checkpoint that does not
match, or cannot be read, is ignored with a warning and training starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from torchrepro.atomic import write_bytes
from torchrepro.checkpoint import safe_load, to_bytes
from torchrepro.errors import DataError


def file_digest(*paths: Path) -> str:
    """SHA-256 over the bytes of the given files, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class ResumeStore:
    """Save, find and clear the resume checkpoint for one fingerprint."""

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any], every_s: float = 0.0):
        self.directory = Path(directory)
        # As plain JSON data: a str subclass such as torch.__version__ (TorchVersion) would be
        # pickled as its class, and weights_only loading then refuses the whole checkpoint.
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        key = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.path = self.directory / f"{key}.pt"
        self.every_s = every_s
        self._last_save = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The matching checkpoint's state, or None (with a warning for each one ignored)."""
        for other in sorted(self.directory.glob("*.pt")):
            if other != self.path:
                warn(f"ignoring resume checkpoint {other}: {self._mismatch(other)}")
        if not self.path.exists():
            return None
        try:
            state = safe_load(self.path)
        except DataError as error:
            warn(f"ignoring resume checkpoint: {error}; starting over")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            warn(f"ignoring resume checkpoint {self.path}: its fingerprint does not match; starting over")
            return None
        return state

    def _mismatch(self, path: Path) -> str:
        """Say which part of the fingerprint differs (params, data, ...), or why it is unreadable."""
        try:
            theirs = safe_load(path).get("fingerprint", {})
        except (DataError, AttributeError) as error:
            return f"unreadable ({error})"
        differ = sorted(k for k in self.fingerprint if theirs.get(k) != self.fingerprint[k])
        return f"made with different {', '.join(differ) or 'settings'}"

    def save(self, state: dict[str, Any], final_epoch: bool = False) -> bool:
        """Write the state atomically, unless less than every_s seconds passed since the last write."""
        if final_epoch or (self.every_s and time.monotonic() - self._last_save < self.every_s):
            return False
        write_bytes(self.path, to_bytes({**state, "fingerprint": self.fingerprint}))
        self._last_save = time.monotonic()
        return True

    def clear(self) -> None:
        """Training finished: remove this experiment's resume checkpoints."""
        shutil.rmtree(self.directory, ignore_errors=True)
