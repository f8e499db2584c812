"""Optimizers and learning-rate schedulers: torch.optim's own classes, chosen by lower-case name.

`train.optimizer` names a torch.optim class (sgd, adam, adamw, adadelta, rmsprop, ...), and
the other keys of `train` are its keyword options. `train.scheduler` names a class of
torch.optim.lr_scheduler (step, exponential, cosine, onecycle, ...) with its options. Options
are checked against the class's signature, then by torch itself on a stand-in parameter, so
a bad value fails before any data is read.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from torchrepro.core.errors import ParamsError
from torchrepro.core.params import Named, Train

# Classes that do not fit a plain loop of step() calls over every parameter.
UNSUPPORTED = {
    "lbfgs": "needs a closure that re-evaluates the loss at each step",
    "sparseadam": "needs sparse gradients",
    "muon": "takes only 2-D weight matrices, not biases or convolutions",
}
OPTIMIZERS = {
    cls.__name__.lower(): cls
    for cls in vars(torch.optim).values()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
}

SCHEDULER_ALIASES = {"cosine": "cosineannealing", "plateau": "reducelronplateau"}
SCHEDULERS = {
    cls.__name__.lower().removesuffix("lr"): cls
    for cls in vars(lr_scheduler).values()
    if isinstance(cls, type)
    and (issubclass(cls, lr_scheduler.LRScheduler) or cls is lr_scheduler.ReduceLROnPlateau)
    and not cls.__name__.startswith("_")
    and cls is not lr_scheduler.LRScheduler
}
SCHEDULERS_UNSUPPORTED = {
    "lambda": "takes a Python function",
    "multiplicative": "takes a Python function",
    "sequential": "takes other schedulers",
    "chainedscheduler": "takes other schedulers",
}
PER_BATCH = {"onecycle", "cyclic"}  # stepped after every batch, as their documentation says


def _allowed(cls: type, skip: tuple[str, ...]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *skip)]


def _check_keys(cls: type, options: dict[str, Any], skip: tuple[str, ...], key: str, what: str) -> None:
    allowed = _allowed(cls, skip)
    for name in options:
        if name not in allowed:
            own = f"{what} {cls.__name__}'s options {', '.join(p for p in allowed if p != 'lr')}"
            if what == "optimizer":
                own = f"the training settings {', '.join(Train.model_fields)} and {own}"
            raise ParamsError(f"{key}.{name}: unknown key; allowed: {own}")
    required = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is inspect.Parameter.empty and p.name not in ("self", *skip) and p.name not in options
    ]
    if required:
        raise ParamsError(f"{key}.{required[0]}: required by {what} {cls.__name__}")


def _as_torch(options: dict[str, Any]) -> dict[str, Any]:
    # YAML has lists where torch.optim documents tuples (betas, etas, step_sizes).
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def optimizer_class(name: str, key: str) -> type[torch.optim.Optimizer]:
    if name in UNSUPPORTED:
        raise ParamsError(f"{key}.optimizer: {name} {UNSUPPORTED[name]}; use another torch.optim optimizer")
    if name not in OPTIMIZERS:
        choices = sorted(set(OPTIMIZERS) - set(UNSUPPORTED))
        raise ParamsError(f"{key}.optimizer: unknown optimizer {name!r}; allowed: {', '.join(choices)}")
    return OPTIMIZERS[name]


def make_optimizer(
    params: Iterable[nn.Parameter], cfg: Train, device: torch.device, key: str = "train"
) -> torch.optim.Optimizer:
    """The torch.optim optimizer that cfg names, with its options; fused kernels on CUDA
    where the class has them and the options do not choose otherwise."""
    cls = optimizer_class(cfg.optimizer, key)
    options = _as_torch(cfg.optimizer_options)
    _check_keys(cls, options | {"lr": cfg.lr}, ("params",), key, "optimizer")
    if device.type == "cuda" and "fused" in _allowed(cls, ()) and not {"fused", "foreach"} & set(options):
        options["fused"] = True
    try:
        return cls(params, lr=cfg.lr, **options)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ParamsError(f"{key}: {cls.__name__}: {error}") from None


@dataclass
class Schedule:
    """A scheduler and when to step it: after every batch or after every epoch."""

    scheduler: Any
    per_batch: bool
    needs_metric: bool  # ReduceLROnPlateau: stepped with the epoch's test loss

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, test_loss: float) -> None:
        if self.needs_metric:
            self.scheduler.step(test_loss)
        elif not self.per_batch:
            self.scheduler.step()


def scheduler_name(cfg: Named, key: str) -> str:
    name = SCHEDULER_ALIASES.get(cfg.name, cfg.name)
    if name in SCHEDULERS_UNSUPPORTED:
        raise ParamsError(f"{key}.name: {cfg.name} {SCHEDULERS_UNSUPPORTED[name]}, which params.yaml cannot hold")
    if name not in SCHEDULERS:
        choices = sorted((set(SCHEDULERS) - set(SCHEDULERS_UNSUPPORTED)) | set(SCHEDULER_ALIASES))
        raise ParamsError(f"{key}.name: unknown scheduler {cfg.name!r}; allowed: {', '.join(choices)}")
    return name


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: Train, steps_per_epoch: int, key: str = "train"
) -> Schedule | None:
    """The torch.optim.lr_scheduler that cfg.scheduler names, or None. Options a scheduler
    requires but the recipe already knows are filled in: OneCycleLR's max_lr (train.lr) and
    total_steps (epochs x batches), CosineAnnealingLR's T_max (epochs)."""
    if cfg.scheduler is None:
        return None
    key = f"{key}.scheduler"
    name = scheduler_name(cfg.scheduler, key)
    cls = SCHEDULERS[name]
    options = _as_torch(cfg.scheduler.options)
    if name == "onecycle":
        options.setdefault("max_lr", cfg.lr)
        if not {"total_steps", "epochs", "steps_per_epoch"} & set(options):
            options["total_steps"] = cfg.epochs * steps_per_epoch
    elif name == "cosineannealing":
        options.setdefault("T_max", cfg.epochs)
    _check_keys(cls, options, ("optimizer",), key, "scheduler")
    try:
        scheduler = cls(optimizer, **options)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as error:
        raise ParamsError(f"{key}: {cls.__name__}: {error}") from None
    return Schedule(scheduler, per_batch=name in PER_BATCH, needs_metric=name == "reducelronplateau")


def check(cfg: Train, key: str = "train") -> None:
    """Build cfg's optimizer and scheduler on a stand-in parameter: every name, option and
    range that torch checks is checked here, before any stage reads data."""
    stand_in = [nn.Parameter(torch.zeros(2, 2))]
    optimizer = make_optimizer(stand_in, cfg, torch.device("cpu"), key)
    make_schedule(optimizer, cfg, steps_per_epoch=1, key=key)
