"""Training loop: the whole split lives on the device as tensors and is shuffled once
per epoch with a seeded generator, so no per-sample Python work runs in the loop.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from torchrepro import normalize, optim
from torchrepro.allocator import fix_malloc_thresholds
from torchrepro.atomic import write_json, write_text
from torchrepro.checkpoint import save_model
from torchrepro.devices import describe, resolve_device
from torchrepro.errors import ParamsError
from torchrepro.models import count_parameters, create_model
from torchrepro.params import Params, Train
from torchrepro.resume import ResumeStore, file_digest

CHUNK_BYTES = 8 << 20  # how much of the shuffled training set to gather at a time
EVAL_BATCH = 128  # images per forward pass when evaluating; see predict()

OPTIMIZERS: dict[str, Callable[..., optim.Optimizer]] = {
    "sgd": lambda params, cfg: optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
    "adam": lambda params, cfg: optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
}


def make_optimizer(model: nn.Module, cfg: Train, key: str = "train") -> optim.Optimizer:
    """Build the optimizer named in cfg; momentum is an SGD-only setting."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ParamsError(f"{key}.optimizer: unknown optimizer {cfg.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    if cfg.momentum and cfg.optimizer != "sgd":
        raise ParamsError(f"{key}.momentum: only sgd takes momentum; remove it or use optimizer: sgd")
    return OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)


def loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on logits for classification, MSE for regression (one output column)."""
    if task == "classification":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(1), y)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Split:
    """One split as tensors on the training device."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray, device: torch.device) -> Split:
        return cls(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Trainer:
    """A model, its optimizer and its data on one device: everything an epoch needs."""

    model: nn.Module
    optimizer: optim.Optimizer
    train: Split
    test: Split
    task: str
    batch_size: int
    seed: int
    shuffle: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.loss = loss_fn(self.task)
        sample_bytes = self.train.x[:1].nbytes or 1
        self.chunk = max(1, CHUNK_BYTES // sample_bytes // self.batch_size) * self.batch_size
        # Its own generator, so the batch order does not depend on dropout's draws.
        self.shuffle = torch.Generator(device=self.train.x.device).manual_seed(self.seed)

    def train_epoch(self, progress: tqdm | None = None) -> tuple[float, float | None]:
        """One pass over a fresh permutation; returns mean loss and accuracy (None for regression)."""
        self.model.train()
        n, device = len(self.train), self.train.x.device
        perm = torch.randperm(n, generator=self.shuffle, device=device)
        starts = range(0, n, self.batch_size)
        # Per-step results go into buffers on the device: one copy op each, no .item() sync.
        losses = torch.empty(len(starts), device=device)
        predictions = torch.empty(n if self.task == "classification" else 0, dtype=torch.long, device=device)
        step = 0
        for chunk_start in range(0, n, self.chunk):
            # Gather a chunk of whole batches at once; the batches inside are views of it.
            # Chunks bound the extra memory (a full copy of 60,000 images would be 188 MB).
            index = perm[chunk_start : chunk_start + self.chunk]
            x, y = self.train.x[index], self.train.y[index]
            for start in range(0, len(index), self.batch_size):
                xb, yb = x[start : start + self.batch_size], y[start : start + self.batch_size]
                out = self.model(xb)
                loss = self.loss(out, yb)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                losses[step] = loss.detach()
                if self.task == "classification":
                    predictions[chunk_start + start : chunk_start + start + len(yb)] = out.argmax(1)
                step += 1
                if progress is not None:
                    progress.update(1)
        sizes = torch.tensor([min(self.batch_size, n - s) for s in starts], device=device)
        mean_loss = (losses * sizes).sum().item() / n
        if self.task == "classification":
            return mean_loss, (predictions == self.train.y[perm]).sum().item() / n
        return mean_loss, None

    def snapshot(self, history: list[dict]) -> dict:
        """Everything needed to continue exactly where this epoch ended: weights, optimizer,
        every random generator and the history so far. Plain tensors and Python data only."""
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
        if self.train.x.is_cuda:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.train.x.device)
        return state

    def restore(self, state: dict) -> list[dict]:
        """Load a snapshot; returns its history."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        name, keys, *rest = state["numpy_rng"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.train.x.device)
        return list(state["history"])

    @torch.no_grad()
    def evaluate(self, split: Split, batch_size: int = EVAL_BATCH) -> tuple[float, float | None]:
        """Mean loss and accuracy on a split, in eval mode (dropout off)."""
        self.model.eval()
        out = predict(self.model, split.x, batch_size)
        loss = self.loss(out, split.y).item()
        if self.task != "classification":
            return loss, None
        accuracy = (out.argmax(1) == split.y).sum().item() / len(split)
        return loss, accuracy


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Model outputs for x in batches, eval mode. The CNN's convolutions take scratch memory
    in proportion to the batch: the train stage on 60,000 images peaked at 1,071 MiB with
    batches of 256 and 1.3 GB with 1,000 (/usr/bin/time -v); with 4,096, the CNN side of
    bench/train_speed.py went past 2 GB."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def history_row(epoch: int, train: tuple, test: tuple) -> dict[str, float]:
    """One history line; accuracy columns only for classification."""
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
    """Train from len(history)+1 to `epochs`; returns the history and each epoch's loop seconds."""
    history = list(history or [])
    seconds: list[float] = []
    steps = -(-len(trainer.train) // trainer.batch_size)
    for epoch in range(len(history) + 1, epochs + 1):
        with tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress, leave=True) as bar:
            started = time.perf_counter()
            train = trainer.train_epoch(bar)  # .item() inside synchronizes the device
            seconds.append(time.perf_counter() - started)
            test = trainer.evaluate(trainer.test)
            history.append(history_row(epoch, train, test))
            bar.set_postfix({k: f"{v:.4f}" for k, v in history[-1].items() if k != "epoch"})
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history, seconds


def write_history(path, history: list[dict]) -> None:
    """history.csv: one row per epoch, for DVC plots and the learning-curve PNG."""
    columns = list(history[0])
    lines = [",".join(columns)]
    lines += [",".join(f"{row[c]:.6g}" if c != "epoch" else str(row[c]) for c in columns) for row in history]
    write_text(path, "\n".join(lines) + "\n")


def run(params: Params, experiment: str, progress: bool = True) -> dict:
    """Train one experiment from params.yaml; writes its model, history and log. Returns the log."""
    fix_malloc_thresholds()  # keeps the CNN's peak memory steady (allocator.py)
    exp = params.experiment(experiment)
    key = f"experiments.{experiment}"
    device = resolve_device(params.device_for(experiment), key=f"{key}.device" if exp.device else "device")
    paths = params.paths
    data_dir = paths.processed_dir(exp.dataset)
    data = normalize.load(data_dir)
    meta, seed = data.meta, params.seed_for(experiment)
    n_outputs = len(meta["classes"]) if meta["task"] == "classification" else 1

    seed_everything(seed)  # before the model exists: its initial weights come from this seed
    model = create_model(exp.model.name, meta["input_shape"], n_outputs, key=f"{key}.model", **exp.model.kwargs)
    model.to(device)
    optimizer = make_optimizer(model, exp.train, key=f"{key}.train")
    trainer = Trainer(
        model, optimizer,
        Split.from_numpy(data.x_train, data.y_train, device),
        Split.from_numpy(data.x_test, data.y_test, device),
        meta["task"], exp.train.batch_size, seed,
    )  # fmt: skip

    fingerprint = {
        "params": exp.model_dump(mode="json"),
        "seed": seed,
        "device": str(device),
        "data": file_digest(*(data_dir / f for f in ("train.npz", "test.npz", "meta.json"))),
        "torch": str(torch.__version__),
        "snapshot": 2,  # the layout of snapshot(); 2: optimizer state from torchrepro.optim
    }
    store = ResumeStore(paths.resume_dir(experiment), fingerprint, exp.train.checkpoint_every_s)
    history: list[dict] = []
    if (state := store.load()) is not None:
        history = trainer.restore(state)
        print(f"{experiment}: resumed from epoch {len(history)} ({store.path})", file=sys.stderr)

    def checkpoint(epoch: int, history: list[dict]) -> None:
        store.save(trainer.snapshot(history), final_epoch=epoch == exp.train.epochs)

    resumed_from = len(history)
    history, seconds = fit(trainer, exp.train.epochs, history, checkpoint, progress)

    info = {
        "experiment": experiment,
        "dataset": exp.dataset,
        "model": exp.model.name,
        "model_kwargs": exp.model.kwargs,
        "input_shape": meta["input_shape"],
        "n_outputs": n_outputs,
        "task": meta["task"],
        "classes": meta["classes"],
        "feature_names": meta["feature_names"],
        "normalize": meta["normalize"],
        "params": exp.model_dump(mode="json"),
        "seed": seed,
        "n_parameters": count_parameters(model),
        "torch_version": str(torch.__version__),
    }
    save_model(paths.model_dir(experiment), model, info)
    write_history(paths.history_file(experiment), history)
    log = {
        "experiment": experiment,
        "device": str(device),
        "device_name": describe(device),
        "resumed_from_epoch": resumed_from,
        "epochs_run": len(seconds),
        "train_seconds": round(sum(seconds), 4),
        "seconds_per_epoch": [round(s, 4) for s in seconds],
    }
    write_json(paths.log_file(experiment), log)
    store.clear()
    return log
