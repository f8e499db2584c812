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

from torchrepro.train.step import Step

if TYPE_CHECKING:
    from tqdm import tqdm

    from torchrepro.models.inference import Split
    from torchrepro.optim import Schedule

ENV = "TORCHREPRO_CUDA_GRAPHS"
WARMUP_STEPS = 3  # eager steps on a side stream before capture (torch's recipe uses a few)


def why_not(
    optimizer: torch.optim.Optimizer, schedule: Schedule | None, world_size: int, full_batches: int
) -> str | None:
    """Why these training steps cannot be captured; None when they can."""
    if os.environ.get(ENV, "1") == "0":
        return f"{ENV}=0"
    if world_size > 1:
        return "DistributedDataParallel's gradient hooks run outside a captured step here"
    if schedule is not None:
        return "a learning-rate scheduler changes the learning rate between steps from the host"
    # Its state must live on the device: capturable or fused kernels; SGD keeps no step count.
    if not isinstance(optimizer, torch.optim.SGD) and not all(
        group.get("capturable") or group.get("fused") for group in optimizer.param_groups
    ):
        name = type(optimizer).__name__
        if "capturable" in inspect.signature(type(optimizer).__init__).parameters:
            return f"{name} runs with capturable=False"
        return f"{name} has no capturable option"
    if full_batches <= WARMUP_STEPS:
        return f"an epoch has {WARMUP_STEPS} or fewer full batches"
    return None


def plan(
    step: Step, split: Split, shuffle: torch.Generator, batch_size: int, schedule: Schedule | None, world_size: int
) -> GraphedSteps | None:
    """GraphedSteps for training on CUDA where the step allows it; None (and one line why) otherwise."""
    if split.device.type != "cuda":
        return None
    reason = why_not(step.optimizer, schedule, world_size, len(split) // batch_size)
    if reason is None and not split.x.is_cuda:
        reason = "the training split is larger than the device can hold, and is copied a chunk at a time"
    if reason is not None:
        print(f"note: CUDA graphs off, the eager loop runs: {reason}", file=sys.stderr)
        return None
    return GraphedSteps(step, split, shuffle, batch_size)


class GraphedSteps:
    """The training step on a full batch captured as a CUDA graph, replayed over an epoch."""

    def __init__(self, step: Step, split: Split, shuffle: torch.Generator, batch_size: int):
        self.step, self.split, self.shuffle, self.batch_size = step, split, shuffle, batch_size
        self.full_steps, self.steps = len(split) // batch_size, -(-len(split) // batch_size)
        # Static buffers: the graph reads and writes these addresses on every replay.
        device = split.device
        self.perm = torch.empty(len(split), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.at = torch.zeros((), dtype=torch.long, device=device)  # the batch the captured step takes
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmed = 0

    def _step(self) -> None:
        """The training step on batch `self.at` of the permutation, all on the device."""
        index = self.perm[self.offsets + self.at * self.batch_size]
        self.step(*self.split.take(index), self.at)
        self.at += 1

    def _capture(self) -> None:
        # Gradients None before capture: backward then allocates them in the graph's own memory.
        self.step.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def epoch(self, progress: tqdm | None = None) -> None:
        """One pass over a fresh permutation into the step's tallies, as the eager loop makes it."""
        self.step.model.train()
        torch.randperm(len(self.split), generator=self.shuffle, device=self.perm.device, out=self.perm)
        self.at.zero_()
        done = 0
        while self.graph is None and done < self.full_steps:
            if self.warmed < WARMUP_STEPS:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._step()
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
        if self.full_steps < self.steps:  # the last, shorter batch, eagerly
            index = self.perm[self.full_steps * self.batch_size :]
            self.step(*self.split.take(index), self.full_steps)
            if progress is not None:
                progress.update(1)
