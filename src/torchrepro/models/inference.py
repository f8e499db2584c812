"""Running and scoring a network, the same way in training, evaluation and prediction."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

EVAL_BATCH = 128  # inputs per forward pass when evaluating: a CNN's scratch memory grows with it


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on logits for classification, mean squared error for regression (one output)."""
    if task == "classification":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(1), y)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Model outputs for x in batches, in eval mode (dropout off)."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
