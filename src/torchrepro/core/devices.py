"""Turn the `device` param into a torch.device, or fail with a clear error; never fall back silently.

torch is imported inside the functions: core must stay importable without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchrepro.core.errors import ParamsError
from torchrepro.core.params import DEVICE_CHOICES, DEVICE_PATTERN

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    import torch

    if not DEVICE_PATTERN.match(name):  # params are checked already; --device on a command line is not
        raise ParamsError(f"{key}: unknown device {name!r}; allowed: {DEVICE_CHOICES}")

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamsError(f"{key}: {name!r} requested but CUDA is not available on this machine; use cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ParamsError(
                f"{key}: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ParamsError(f"{key}: 'mps' requested but Apple MPS is not available on this machine; use cpu or auto")
    return torch.device(name)


def describe(device: torch.device) -> str:
    """A human name for logs and reports: 'cpu (2 threads)' or the GPU's name."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return device.type
