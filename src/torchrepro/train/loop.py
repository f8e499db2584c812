"""The training loop: the split is shuffled once per epoch with a seeded generator and
gathered a chunk of whole batches at a time, so no per-sample Python work runs in the loop and
memory does not grow with the dataset (models/inference.py's Split: a memory map on the CPU,
the device's memory on CUDA). Each batch is one call of the training step (step.py); on CUDA an
epoch's full batches replay it as a captured graph (graphs.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from torchrepro.core.errors import UserError
from torchrepro.models.inference import EVAL_BATCH, Split, loss_fn, predict
from torchrepro.optim import Schedule
from torchrepro.train import graphs
from torchrepro.train.distributed import World
from torchrepro.train.graphs import GraphedSteps
from torchrepro.train.step import Step, Tallies

CHUNK_BYTES = 8 << 20  # how much of the shuffled training set to gather at a time


class TrainingDiverged(UserError):
    """The loss stopped being a finite number: the model would be garbage."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Trainer:
    """A model, its optimizer (and schedule) and its data on one device: all an epoch needs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: Split
    test: Split
    task: str
    batch_size: int
    seed: int
    schedule: Schedule | None = None
    world: World = World()
    shuffle: torch.Generator = field(init=False)
    step: Step = field(init=False)

    def __post_init__(self) -> None:
        self.loss = loss_fn(self.task)
        device = self.train.device
        self.chunk = max(1, CHUNK_BYTES // self.train.input_bytes // self.batch_size) * self.batch_size
        # Its own generator, so the batch order does not depend on dropout's draws.
        self.shuffle = torch.Generator(device=device).manual_seed(self.seed)
        model = self.model
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
        tallies = Tallies(self.steps_per_epoch, device, self.task == "classification")
        self.step = Step(model, self.optimizer, self.loss, tallies)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.batch_size)

    @cached_property
    def graphed(self) -> GraphedSteps | None:
        """The epochs as CUDA graphs, or None for the eager loop. Decided once, at the first
        epoch: the schedule is set by then, and a resume has restored the optimizer."""
        return graphs.plan(self.step, self.train, self.shuffle, self.batch_size, self.schedule, self.world.size)

    def train_epoch(self, progress: tqdm | None = None) -> tuple[float, float | None]:
        """One pass over a fresh permutation; returns mean loss and accuracy (None for regression)."""
        self.step.tallies.zero()
        if self.graphed is not None:
            self.graphed.epoch(progress)
        else:
            self._eager_epoch(progress)
        return self.step.tallies.means(len(self.train), self.world)

    def _eager_epoch(self, progress: tqdm | None) -> None:
        self.step.model.train()
        n = len(self.train)
        perm = torch.randperm(n, generator=self.shuffle, device=self.train.device)
        at = 0
        for chunk_start in range(0, n, self.chunk):
            # Gather a chunk of whole batches at once; the batches inside are views of it.
            # Chunks bound the extra memory (60,000 images as inputs would be 188 MB).
            index = perm[chunk_start : chunk_start + self.chunk]
            x, y = self.train.take(index)
            for start in range(0, len(index), self.batch_size):
                end = min(start + self.batch_size, len(index))
                lo, hi = self.world.part(start, end)
                # DDP averages gradients over the ranks: weighting each rank's mean by its
                # share of the batch makes that average the whole batch's mean loss.
                self.step(x[lo:hi], y[lo:hi], at, weight=(hi - lo) * self.world.size / (end - start))
                if self.schedule is not None:
                    self.schedule.after_batch()
                at += 1
                if progress is not None:
                    progress.update(1)

    def snapshot(self, history: list[dict]) -> dict:
        """Everything needed to continue exactly where this epoch ended: weights, optimizer,
        scheduler, every random generator and the history so far. Plain tensors and data only."""
        numpy_state = np.random.get_state()
        state = {
            "epoch": len(history),
            "history": history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_rng": self.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        }
        if self.schedule is not None:
            state["scheduler"] = self.schedule.scheduler.state_dict()
        if self.train.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.train.device)
        return state

    def restore(self, state: dict) -> list[dict]:
        """Load a snapshot; returns its history."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.scheduler.load_state_dict(state["scheduler"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        name, keys, *rest = state["numpy_rng"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.train.device)
        return list(state["history"])

    @torch.no_grad()
    def evaluate(self, split: Split, batch_size: int = EVAL_BATCH) -> tuple[float, float | None]:
        """Mean loss and accuracy on a split, in eval mode (dropout off)."""
        out = predict(self.model, split, batch_size)
        loss = self.loss(out, split.y).item()
        if self.task != "classification":
            return loss, None
        return loss, (out.argmax(1) == split.y).sum().item() / len(split)


def history_row(epoch: int, train: tuple, test: tuple) -> dict[str, float]:
    """One epoch's results; accuracy only for classification."""
    row = {"epoch": epoch, "train_loss": train[0], "test_loss": test[0]}
    if train[1] is not None:
        row |= {"train_accuracy": train[1], "test_accuracy": test[1]}
    return row


def fit(
    trainer: Trainer,
    epochs: int,
    history: list[dict] | None = None,
    on_epoch_end: Callable[[int, list[dict]], None] | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[float]]:
    """Train from len(history)+1 to `epochs`; returns the history and each epoch's loop seconds.
    A loss that is no longer finite stops training with an error: the model would be garbage."""
    history = list(history or [])
    seconds: list[float] = []
    for epoch in range(len(history) + 1, epochs + 1):
        # disable= only to turn the bar off: an explicit disable=False would override TQDM_DISABLE.
        quiet = {} if progress else {"disable": True}
        bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="batch", **quiet)
        with bar:
            started = time.perf_counter()
            train = trainer.train_epoch(bar)  # .item() inside synchronizes the device
            seconds.append(time.perf_counter() - started)
            test = trainer.evaluate(trainer.test)
            if not (math.isfinite(train[0]) and math.isfinite(test[0])):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}: the loss is {train[0]} (train), {test[0]} (test); "
                    "lower train.lr or change the optimizer's options"
                )
            history.append(history_row(epoch, train, test))
            bar.set_postfix({k: f"{v:.4f}" for k, v in history[-1].items() if k != "epoch"})
        if trainer.schedule is not None:
            trainer.schedule.after_epoch(test[0])
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history, seconds
