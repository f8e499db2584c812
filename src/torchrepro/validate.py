"""The validate stage, at the head of the DAG: every params error surfaces here, once, before
any other stage runs and DVC removes its previous outputs.

It checks what the schema (core/params.py) cannot check alone: each experiment's model
options against the model's constructor, its optimizer and scheduler options against
torch.optim itself, each dataset's source options, and that the devices exist here.

The checks that need torch (about 3 s of start-up) are remembered by what they read, in
`paths.logs`/params.checked.json: an edit that changes none of it, such as more epochs without a
scheduler or another dataset split, is checked without importing torch.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from torchrepro.core.io import file_digest, json_digest, write_json, write_text
from torchrepro.core.params import Experiment, Params
from torchrepro.download.sources import resolve_source

MARKER = "params.yaml is valid\n"  # the same bytes whenever the params are valid: nothing reruns for it
# In paths.logs, beside the marker: git-ignored, no DVC output, read by the next run only. The
# dot keeps it apart from the train logs, <experiment>.json (experiment names have none).
MEMO = "params.checked.json"
PACKAGE = Path(__file__).resolve().parent


def check(params: Params, memo: str | Path | None = None) -> None:
    """Raise ParamsError, naming the key, for the first value no stage could use. With `memo`,
    skip the torch checks of an experiment whose inputs to them passed last time."""
    for name, dataset in params.datasets.items():
        resolve_source(name, dataset.source)
    passed_before, passed = _read_memo(memo), []
    for name, exp in params.experiments.items():
        device_name = params.device_for(name)
        digest = _inputs_digest(exp, device_name)
        if digest is None or digest not in passed_before:
            _check_with_torch(name, exp, device_name)
        if digest is not None:
            passed.append(digest)
    if memo is not None:
        write_json(memo, {"passed": passed})


def _check_with_torch(name: str, exp: Experiment, device_name: str) -> None:
    from torchrepro import optim
    from torchrepro.core.devices import resolve_device
    from torchrepro.models.nets import check_options

    key = f"experiments.{name}"
    check_options(exp.model.name, exp.model.options, f"{key}.model")
    device = resolve_device(device_name, key=f"{key}.device" if exp.device else "device")
    optim.check(exp.train, f"{key}.train", device)  # on the device: some options hold only on CUDA


def _inputs_digest(exp: Experiment, device_name: str) -> str | None:
    """A digest of everything `_check_with_torch` reads for `exp`, or None where the result also
    depends on the machine (which GPUs it has). optim.check never reads batch_size, and reads
    epochs only to run the schedule."""
    if device_name != "cpu":
        return None
    unread = {"batch_size"} if exp.train.scheduler else {"batch_size", "epochs"}
    inputs: dict[str, Any] = {
        "model": exp.model.model_dump(),
        "train": exp.train.model_dump(exclude=unread),
        "checker": _checker(),
    }
    try:
        return json_digest(inputs)
    except (TypeError, ValueError):  # a value JSON has no form for (a YAML date): torch's checks name it
        return None


@cache
def _checker() -> dict[str, str]:
    """What else decides the checks: this package's code and the versions of torch and pydantic."""
    code = file_digest(*sorted(PACKAGE.rglob("*.py")))
    return {"code": code} | {dist: version(dist) for dist in ("torch", "pydantic")}


def _read_memo(memo: str | Path | None) -> set[str]:
    """The digests that passed last time; none when there is no readable memo (then every
    check runs)."""
    if memo is None:
        return set()
    try:
        return set(json.loads(Path(memo).read_text())["passed"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def run(params: Params, marker: str) -> None:
    """Check the params; write `marker`, the file every first stage depends on."""
    check(params, Path(params.paths.logs) / MEMO)
    write_text(marker, MARKER)
