"""CUDA graphs for the training step: captured once, replayed for every full batch.

On a GPU, small models spend an epoch waiting on Python: each step launches dozens of tiny
kernels. A captured step replays them all with one launch. The step reads its batch from the
epoch's permutation on the device (drawn by the same seeded generator as the eager loop), and
writes its loss and correct count into device buffers, so nothing inside an epoch waits on the
host; the last, shorter batch runs eagerly. The first steps of the first epoch run eagerly on a
side stream (cuBLAS and the optimizer's state are made then), as torch's documentation asks.

Where capture is not possible the eager loop runs, and one line says why.
TORCHREPRO_CUDA_GRAPHS=0 turns graphs off (it cannot change results, so it is no DVC param).
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tqdm import tqdm

    from torchrepro.train.loop import Trainer

ENV = "TORCHREPRO_CUDA_GRAPHS"
WARMUP_STEPS = 3  # eager steps on a side stream before capture (torch's recipe uses a few)


def why_not(trainer: Trainer) -> str | None:
    """Why this trainer's steps cannot be captured; None when they can."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if trainer.world.size > 1:
        return "DistributedDataParallel's gradient hooks run outside a captured step here"
    if trainer.schedule is not None:
        return "a learning-rate scheduler changes the learning rate between steps from the host"
    optimizer = trainer.optimizer
    # Its state must live on the device: capturable or fused kernels; SGD keeps no step count.
    if not isinstance(optimizer, torch.optim.SGD) and not all(
        group.get("capturable") or group.get("fused") for group in optimizer.param_groups
    ):
        name = type(optimizer).__name__
        if "capturable" in inspect.signature(type(optimizer).__init__).parameters:
            return f"{name} runs with capturable=False"
        return f"{name} has no capturable option"
    if len(trainer.train) // trainer.batch_size <= WARMUP_STEPS:
        return f"an epoch has {WARMUP_STEPS} or fewer full batches"
    return None


def plan(trainer: Trainer) -> GraphedSteps | None:
    """A GraphedSteps for a CUDA trainer that allows it; None (and one line why) otherwise."""
    if not trainer.train.x.is_cuda:
        return None
    reason = why_not(trainer)
    if reason is not None:
        print(f"note: CUDA graphs off, the eager loop runs: {reason}", file=sys.stderr)
        return None
    return GraphedSteps(trainer)


class GraphedSteps:
    """One full-batch training step captured as a CUDA graph, replayed over an epoch."""

    def __init__(self, trainer: Trainer):
        self.t = trainer
        device, n, batch = trainer.train.x.device, len(trainer.train), trainer.batch_size
        self.full_steps = n // batch
        # Static buffers: the graph reads and writes these addresses on every replay.
        self.perm = torch.empty(n, dtype=torch.long, device=device)
        self.offsets = torch.arange(batch, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.steps = torch.arange(trainer.steps_per_epoch, device=device)
        self.losses = torch.zeros(trainer.steps_per_epoch, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmed = 0

    def _step(self) -> None:
        """The training step of batch `self.step` of the permutation, all on the device."""
        t, batch = self.t, self.t.batch_size
        index = self.perm[self.offsets + self.step * batch]
        xb, yb = t.train.x[index], t.train.y[index]
        out = t.model(xb)
        loss = t.loss(out, yb)
        loss.backward()
        t.optimizer.step()
        # losses[step] = loss x batch, without indexing by a device scalar: 0 + 1 x v is v exactly.
        self.losses += (self.steps == self.step) * (loss.detach() * batch)
        if t.task == "classification":
            self.correct += (out.argmax(1) == yb).sum()
        self.step += 1

    def _eager(self) -> None:
        self.t.optimizer.zero_grad(set_to_none=True)
        self._step()

    def _capture(self) -> None:
        self.t.optimizer.zero_grad(set_to_none=True)  # backward inside the graph then allocates
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def epoch(self, progress: tqdm | None = None) -> tuple[float, float | None]:
        """One pass over a fresh permutation; the same results as Trainer's eager epoch."""
        t = self.t
        t.model.train()
        torch.randperm(len(t.train), generator=t.shuffle, device=self.perm.device, out=self.perm)
        self.step.zero_()
        self.losses.zero_()
        self.correct.zero_()
        done = 0
        while self.graph is None and done < self.full_steps:
            if self.warmed < WARMUP_STEPS:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._eager()
                torch.cuda.current_stream().wait_stream(side)
                self.warmed += 1
            else:
                self._capture()  # records the step without running it
                self.graph.replay()
            done += 1
            if progress is not None:
                progress.update(1)
        for _ in range(done, self.full_steps):
            self.graph.replay()
            if progress is not None:
                progress.update(1)
        if self.full_steps < t.steps_per_epoch:  # the last, shorter batch
            self._last_batch()
            if progress is not None:
                progress.update(1)
        n = len(t.train)
        mean_loss = self.losses.sum().item() / n
        if t.task == "classification":
            return mean_loss, self.correct.item() / n
        return mean_loss, None

    def _last_batch(self) -> None:
        t = self.t
        index = self.perm[self.full_steps * t.batch_size :]
        xb, yb = t.train.x[index], t.train.y[index]
        out = t.model(xb)
        loss = t.loss(out, yb)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()
        self.losses[-1] = loss.detach() * len(yb)
        if t.task == "classification":
            self.correct += (out.argmax(1) == yb).sum()
