"""dvclive as the pipeline's metrics writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_live(directory: str | Path) -> Any:
    """dvclive for a pipeline stage. DVC already tracks the files (they are declared in
    dvc.yaml), so dvclive writes no dvc.yaml, saves no experiment and makes no report."""
    from dvclive import Live  # imports part of DVC: only the stages that log pay for it

    return Live(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None)
