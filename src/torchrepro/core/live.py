"""dvclive as the pipeline's metrics writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_live(directory: str | Path) -> Any:
    """dvclive for a pipeline stage. DVC already tracks the files (they are declared in
    dvc.yaml), so dvclive writes no dvc.yaml, saves no experiment and makes no report."""
    return DeferredLive(directory)


class DeferredLive:
    """dvclive's Live, opened on first use. Opening clears the previous run's files, so a run
    that fails before it logs anything (data that does not load, a loss that is NaN in the
    first epoch) leaves the previous metrics as they were."""

    def __init__(self, directory: str | Path):
        object.__setattr__(self, "_directory", directory)
        object.__setattr__(self, "_live", None)

    def _open(self) -> Any:
        if self._live is None:
            from dvclive import Live  # imports part of DVC: only the stages that log pay for it

            object.__setattr__(
                self, "_live", Live(dir=str(self._directory), dvcyaml=None, save_dvc_exp=False, report=None)
            )
        return self._live

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._open(), name, value)
