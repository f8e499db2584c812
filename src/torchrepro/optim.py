"""Optimizers and learning-rate schedulers: torch.optim's own classes, chosen by lower-case name.

`train.optimizer` names a torch.optim class (sgd, adam, adamw, adadelta, rmsprop, ...), and
the other keys of `train` are its keyword options. `train.scheduler` names a class of
torch.optim.lr_scheduler (step, exponential, cosine, onecycle, ...) with its options. Options
are checked against the class's signature, then by torch itself on a stand-in parameter, so
a bad value fails before any data is read.

Below both stages that use it: validate checks every experiment's options by building them
here on a stand-in, and train builds them here for real, so what validate accepts is what
train runs.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, get_type_hints

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError
from torch import nn
from torch.optim import lr_scheduler

from torchrepro.core.errors import ParamsError, first_error, first_line
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

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Optimizers whose step takes a square root (of a running mean of squared gradients).
TAKES_SQUARE_ROOTS = {"adam", "adamw", "adadelta", "adagrad", "rmsprop", "nadam", "radam", "adafactor"}

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
SIMULATED_STEPS = 100_000  # a schedule is run on a stand-in for at most this many steps (~1 s)
# Names torch.optim's string annotations use but its modules do not import at run time.
# Lists, not iterables: pydantic checks an iterable's items only as it is consumed.
HINT_NAMES = {"Callable": Callable, "Iterable": list, "Sequence": list}


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


@cache
def _option_types(cls: type) -> dict[str, TypeAdapter]:
    """A validator for each keyword option of a torch.optim class, from its annotations."""
    config = ConfigDict(strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)
    hints = get_type_hints(cls.__init__, localns=HINT_NAMES)
    return {name: TypeAdapter(hint, config=config) for name, hint in hints.items() if name != "return"}


def _check_types(cls: type, options: dict[str, Any], key: str, what: str) -> None:
    """Each option against its annotation, as YAML gives it (a list where torch says tuple).
    torch checks some ranges but few types: `amsgrad: 2` or `step_size: "a"` would otherwise
    train without a word or fail mid-training."""
    types = _option_types(cls)
    for name, value in options.items():
        if name not in types:
            continue
        try:
            as_json = json.dumps(value)
        except (TypeError, ValueError):  # a YAML date or timestamp: no option of torch.optim's takes one
            raise ParamsError(
                f"{key}.{name}: {value!r} is not a number, string, boolean or list for {what} {cls.__name__}"
            ) from None
        try:
            types[name].validate_json(as_json, strict=True)
        except ValidationError as error:
            first = first_error(error)
            where = ".".join(map(str, (name, *first.loc)))
            raise ParamsError(f"{key}.{where}: {first.message} for {what} {cls.__name__} (got {value!r})") from None


def _trial_step(optimizer: torch.optim.Optimizer, key: str) -> None:
    """One step on a stand-in parameter: options torch accepts when building the optimizer but
    refuses at its first step (capturable on a CPU, differentiable) fail here, before training."""
    try:
        optimizer.step()
    # AssertionError: how torch.optim reports capturable=True on a device that cannot capture;
    # OverflowError: an integer option too large for the kernels (eps: 10**30)
    except (RuntimeError, ValueError, TypeError, AssertionError, OverflowError) as error:
        raise ParamsError(
            f"{key}: {type(optimizer).__name__} cannot take a step with these options: {first_line(error)}"
        ) from None


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
    """The torch.optim optimizer that cfg names, with its options; fused kernels where the
    class has them and the options do not choose otherwise."""
    cls = optimizer_class(cfg.optimizer, key)
    options = _as_torch(cfg.optimizer_options)
    _check_keys(cls, options | {"lr": cfg.lr}, ("params",), key, "optimizer")
    _check_types(cls, cfg.optimizer_options, key, "optimizer")
    _check_float32(options | {"lr": cfg.lr}, key)
    allowed = _allowed(cls, ())
    # Fused kernels: one kernel a step, the step count on the device (CUDA graphs can capture
    # it), and on the CPU ATen's own vector code instead of MKL's vector math, whose square
    # roots differ in the last bit between Intel and AMD CPUs.
    fused = options | {"fused": True}
    chosen = {"fused", "foreach", "capturable", "differentiable"} & set(options)  # the recipe's own choice
    if "fused" in allowed and not chosen and _accepts(cls, cfg.lr, fused, device):
        options = fused
    # Otherwise state on the device where the class allows it, so that a CUDA graph can capture the step.
    capturable = options | {"capturable": True}
    if (
        device.type == "cuda"
        and "capturable" in allowed
        and not {"capturable", "fused"} & set(options)
        and _accepts(cls, cfg.lr, capturable, device)
    ):
        options = capturable
    try:
        _trial_step(_stand_in_optimizer(cls, cfg.lr, options, device), key)
        return cls(params, lr=cfg.lr, **options)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ParamsError(f"{key}: {cls.__name__}: {error}") from None


def _check_float32(options: dict[str, Any], key: str) -> None:
    """The kernels take the options as float32: a number past its range would be inf, and
    training NaN (the unfused kernels said so only at their first step, the fused ones never)."""
    for name, value in options.items():
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float) and math.isfinite(number) and abs(number) > FLOAT32_MAX:
                raise ParamsError(f"{key}.{name}: {number:g} is out of float32's range (at most {FLOAT32_MAX:.4g})")


def _accepts(cls: type, lr: float, options: dict[str, Any], device: torch.device) -> bool:
    """Whether torch takes a step with these options on this device (kernels it has)."""
    try:
        _trial_step(_stand_in_optimizer(cls, lr, options, device), "")
    except (ParamsError, ValueError, TypeError, RuntimeError):
        return False
    return True


def host_dependent(optimizer: torch.optim.Optimizer) -> str | None:
    """Why this CPU optimizer's bytes may differ between Intel and AMD hosts; None if they do not.
    torch's unfused kernels take square roots through MKL's vector math (VML), which picks
    its code by CPU vendor even under MKL_CBWR=COMPATIBLE; fused kernels use ATen's own."""
    if all(group.get("fused") for group in optimizer.param_groups):
        return None
    if type(optimizer).__name__.lower() in TAKES_SQUARE_ROOTS:
        return f"{type(optimizer).__name__} has no fused CPU kernel here; its square roots run in MKL's vector math"
    return None


def _stand_in_optimizer(cls: type, lr: float, options: dict[str, Any], device: torch.device) -> torch.optim.Optimizer:
    stand_in = nn.Parameter(torch.zeros(2, device=device))
    stand_in.grad = torch.ones_like(stand_in)
    return cls([stand_in], lr=lr, **options)


@dataclass
class Schedule:
    """A scheduler and when to step it: after every batch or after every epoch."""

    scheduler: Any
    per_batch: bool
    needs_metric: bool  # ReduceLROnPlateau: stepped with the epoch's test loss
    options: dict[str, Any]  # as the scheduler got them, those filled in from train.epochs included

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
    options = dict(cfg.scheduler.options)
    if name == "onecycle":
        options.setdefault("max_lr", cfg.lr)
        if not {"total_steps", "epochs", "steps_per_epoch"} & set(options):
            options["total_steps"] = cfg.epochs * steps_per_epoch
    elif name == "cosineannealing":
        options.setdefault("T_max", cfg.epochs)
    _check_keys(cls, options, ("optimizer",), key, "scheduler")
    _check_types(cls, options, key, "scheduler")
    options = _as_torch(options)
    per_batch, needs_metric = name in PER_BATCH, name == "reducelronplateau"
    steps = cfg.epochs * (steps_per_epoch if per_batch else 1)
    _simulate(cls, options, optimizer, min(steps, SIMULATED_STEPS), needs_metric, key)
    try:
        scheduler = cls(optimizer, **options)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as error:
        raise ParamsError(f"{key}: {cls.__name__}: {error}") from None
    return Schedule(scheduler, per_batch, needs_metric, options)


def _simulate(cls: type, options: dict, optimizer: torch.optim.Optimizer, steps: int, needs_metric: bool, key: str):
    """Run the schedule for the whole training on a stand-in with the optimizer's settings: a
    step_size of 0, a OneCycleLR shorter than the training or a negative gamma would otherwise
    fail mid-training, or train with a negative learning rate (gradient ascent) without a word."""
    stand_in = torch.optim.SGD([nn.Parameter(torch.zeros(1))])
    stand_in.param_groups[0].update({k: v for k, v in optimizer.param_groups[0].items() if k != "params"})
    stand_in.defaults = dict(optimizer.defaults)
    step = 0
    try:
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no training here
            warnings.simplefilter("ignore")
            scheduler = cls(stand_in, **options)
            for step in range(1, steps + 1):
                scheduler.step(1.0) if needs_metric else scheduler.step()
                lr = float(stand_in.param_groups[0]["lr"])
                if not (math.isfinite(lr) and lr >= 0):
                    raise ParamsError(
                        f"{key}: {cls.__name__} makes the learning rate {lr:g} at step {step}; it must stay finite and >= 0"
                    )
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError) as error:
        when = f" at step {step}" if step else ""
        raise ParamsError(f"{key}: {cls.__name__} fails{when}: {first_line(error)}") from None


def check(cfg: Train, key: str = "train", device: torch.device | None = None) -> None:
    """Build cfg's optimizer and scheduler on a stand-in parameter on `device` (CPU by default):
    every name, option and range that torch checks is checked here, before any stage reads data."""
    device = device or torch.device("cpu")
    stand_in = [nn.Parameter(torch.zeros(2, 2, device=device))]
    optimizer = make_optimizer(stand_in, cfg, device, key)
    make_schedule(optimizer, cfg, steps_per_epoch=1, key=key)
