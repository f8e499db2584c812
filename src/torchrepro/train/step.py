"""The training step, written once: the eager loop runs it for every batch (loop.py), a CUDA
graph captures it (graphs.py), and a graphed epoch's last, shorter batch runs it eagerly.

Its results go into device buffers, one op each, so no step waits on the host: an epoch
synchronizes once, when it reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from torchrepro.train.distributed import World


class Tallies:
    """An epoch's results on the device: each batch's summed loss and, for a classifier, how
    many inputs it got right."""

    def __init__(self, steps: int, device: torch.device, classification: bool):
        self.losses = torch.zeros(steps, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.steps = torch.arange(steps, device=device)
        self.classification = classification

    def zero(self) -> None:
        self.losses.zero_()
        self.correct.zero_()

    def add(self, at: int | torch.Tensor, summed_loss: torch.Tensor, correct: torch.Tensor | None) -> None:
        """Batch `at`'s results. A captured step's `at` is a tensor on the device: indexing by
        it would wait on the host, so it selects by a mask instead (0 + 1 x v is v exactly)."""
        if isinstance(at, int):
            self.losses[at] = summed_loss
        else:
            self.losses += (self.steps == at) * summed_loss
        if correct is not None:
            self.correct += correct

    def means(self, n: int, world: World) -> tuple[float, float | None]:
        """Mean loss and accuracy (None for regression) over the `n` inputs of every rank."""
        mean_loss = world.sum(self.losses).sum().item() / n
        if not self.classification:
            return mean_loss, None
        return mean_loss, world.sum(self.correct).item() / n


@dataclass
class Step:
    """One optimizer step on one batch: forward, loss, backward, step, the batch's tallies."""

    model: nn.Module  # what the step calls: under several ranks, DDP's wrapper, which averages gradients
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the batch's mean loss
    tallies: Tallies

    def __call__(self, x: torch.Tensor, y: torch.Tensor, at: int | torch.Tensor, weight: float = 1.0) -> None:
        """Train on batch `at`, inputs `x` and targets `y`. `weight` scales the gradient of the
        mean loss, not the tallied loss: a rank's share of a batch split over several ranks."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(x)
        loss = self.loss(out, y) if len(y) else out.sum() * 0.0  # a rank's empty share of a short batch
        summed = loss.detach() * len(y)
        (loss * weight if weight != 1.0 else loss).backward()
        self.optimizer.step()
        correct = (out.argmax(1) == y).sum() if self.tallies.classification else None
        self.tallies.add(at, summed, correct)
