"""The validate stage, at the head of the DAG: every params error surfaces here, once, before
any other stage runs and DVC removes its previous outputs.

It checks what the schema (core/params.py) cannot check alone: each experiment's model
options against the model's constructor, its optimizer and scheduler options against
torch.optim itself, each dataset's source options, and that the devices exist here.
"""

from __future__ import annotations

from torchrepro import optim
from torchrepro.core.devices import resolve_device
from torchrepro.core.io import write_text
from torchrepro.core.params import Params
from torchrepro.download.sources import resolve_source
from torchrepro.models.nets import check_options

MARKER = "params.yaml is valid\n"  # the same bytes whenever the params are valid: nothing reruns for it


def check(params: Params) -> None:
    """Raise ParamsError, naming the key, for the first value no stage could use."""
    for name, dataset in params.datasets.items():
        resolve_source(name, dataset.source)
    for name, exp in params.experiments.items():
        key = f"experiments.{name}"
        check_options(exp.model.name, exp.model.options, f"{key}.model")
        device = resolve_device(params.device_for(name), key=f"{key}.device" if exp.device else "device")
        optim.check(exp.train, f"{key}.train", device)  # on the device: some options hold only on CUDA


def run(params: Params, marker: str) -> None:
    """Check the params; write `marker`, the file every first stage depends on."""
    check(params)
    write_text(marker, MARKER)
