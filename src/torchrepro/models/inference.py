"""Running and scoring a network, the same way in training, evaluation and prediction, and
the splits it runs on.

A split of images is kept as its uint8 pixels (a quarter of float32's bytes, in memory and on
the device) and becomes the network's float32 inputs a batch at a time, on the device, by the
float32 operations the statistics were taken with (normalize/prepare.py): pixels / 255, minus
the mean, over the std. A split of table rows is stored normalized already.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EVAL_BATCH = 128  # inputs per forward pass when evaluating: a CNN's scratch memory grows with it


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on logits for classification, mean squared error for regression (one output)."""
    if task == "classification":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(1), y)


@dataclass
class Pixels:
    """uint8 pixels to the network's inputs: ((x / divisor) - mean) / std, each step in float32.
    The constants are tensors on the device: CUDA would turn a division by a host scalar into
    a multiplication by its reciprocal, which rounds differently."""

    divisor: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_meta(cls, normalize: dict[str, Any], device: torch.device) -> Pixels:
        def constant(value: Any) -> torch.Tensor:
            return torch.tensor(np.asarray(value, np.float32), device=device)

        return cls(
            constant(255 if normalize["scale"] != 1.0 else 1), constant(normalize["mean"]), constant(normalize["std"])
        )

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().div_(self.divisor).sub_(self.mean).div_(self.std)


@dataclass
class Split:
    """One split for a network on `device`: inputs as stored (uint8 pixels, turned into inputs
    by `pixels`, or float32 features) and targets. The tensors are on the device, or, for a
    split the device cannot hold, on the host (memory-mapped), from where each batch is copied."""

    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    pixels: Pixels | None = None

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray, device: torch.device, meta: dict | None = None) -> Split:
        """A split of stored arrays (a memory map is not read until a batch needs it); `meta`
        (meta.json) says how uint8 pixels are normalized. On CUDA the split moves to the device
        when it takes at most half its free memory."""
        device = torch.device(device)
        where = device
        if device.type == "cuda" and x.nbytes + y.nbytes > torch.cuda.mem_get_info(device)[0] // 2:
            where = torch.device("cpu")
        pixels = Pixels.from_meta(meta["normalize"], device) if x.dtype == np.uint8 else None
        return cls(torch.from_numpy(x).to(where), torch.from_numpy(y).to(where), device, pixels)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_bytes(self) -> int:
        """The bytes of one input as the network takes it (float32)."""
        return 4 * (self.x[:1].numel() or 1)

    def take(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's inputs and the targets of rows `index`, on the device."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.x.device)
        x, y = self.x[index], self.y[index]
        if self.x.device != self.device:  # a host-resident split: copy through pinned memory
            x, y = (t.pin_memory().to(self.device, non_blocking=True) for t in (x, y))
        return (x if self.pixels is None else self.pixels(x)), y


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor | Split, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Model outputs for inputs x, or for a split's inputs, in batches, in eval mode (dropout off)."""
    model.eval()
    batch = (
        (lambda i: x.take(slice(i, i + batch_size))[0]) if isinstance(x, Split) else (lambda i: x[i : i + batch_size])
    )
    return torch.cat([model(batch(i)) for i in range(0, len(x), batch_size)])
