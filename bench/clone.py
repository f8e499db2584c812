"""What the pipeline benchmarks share: a fresh clone of this repository (HEAD) and the
environment its stages run in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh_clone(where: Path) -> Path:
    """`git clone` of HEAD into where/clone: committed files only, empty DVC cache."""
    clone = where / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    return clone


def env(repo: Path) -> dict[str, str]:
    """The venv first on PATH (dvc.yaml runs `python`), and the clone's own library."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(repo / "src"),
            "DVC_NO_ANALYTICS": "1"}  # fmt: skip
