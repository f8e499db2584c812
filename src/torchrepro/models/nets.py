"""Models by name: `create_model(name, input_shape, n_outputs, **options)`.

Every model returns raw outputs (logits for classification, values for regression); the
loss is chosen by the task (inference.loss_fn), not by the model. A model's options are its
constructor's keyword arguments; their annotations bound them, and `check_options` validates
them before any tensor is made.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, Literal, get_type_hints

import torch
from pydantic import ConfigDict, Field, ValidationError
from pydantic import create_model as pydantic_model
from torch import nn

from torchrepro.core.errors import ParamsError, first_error

MODELS: dict[str, Callable[..., nn.Module]] = {}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
MAX_PARAMETERS = 2**30  # 4 GiB of float32 weights, before gradients and optimizer state
Width = Annotated[int, Field(ge=1, le=2**16)]
Probability = Annotated[float, Field(ge=0, lt=1)]


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor `fn(input_shape, n_outputs, **options)` under its function name."""
    MODELS[fn.__name__] = fn
    return fn


class TwoLayerNet(nn.Module):
    """The classic tutorial net: flatten -> Linear -> ReLU -> Linear."""

    def __init__(self, in_features: int, hidden_size: int, n_outputs: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, n_outputs),
        )

    def forward(self, x):
        return self.layers(self.flatten(x))


@register_model
def twolayernet(input_shape: list[int], n_outputs: int, hidden_size: Width = 100) -> nn.Module:
    return TwoLayerNet(math.prod(input_shape), hidden_size, n_outputs)


@register_model
def mlp(
    input_shape: list[int],
    n_outputs: int,
    hidden_sizes: Annotated[list[Width], Field(min_length=1, max_length=64)] = (512, 256),
    activation: Literal["relu", "sigmoid", "tanh"] = "relu",
) -> nn.Module:
    """flatten -> (Linear -> activation) per hidden size -> Linear."""
    sizes = [math.prod(input_shape), *hidden_sizes]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], n_outputs))
    return nn.Sequential(*layers)


@register_model
def cnn(input_shape: list[int], n_outputs: int, dropout1: Probability = 0.25, dropout2: Probability = 0.5) -> nn.Module:
    """The pytorch/examples MNIST shape on the data's channels x height x width: two 3x3 convs
    (32, 64), max-pool, dropout, flatten -> 128 -> n; 9216 flattened features for 1x28x28."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn expects images (channels x height x width), the dataset gives {input_shape[0]} features")
    channels, height, width = input_shape
    if min(height, width) < 6:
        raise ValueError(f"cnn expects images of at least 6x6 pixels, the dataset gives {height}x{width}")
    flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)  # two unpadded 3x3 convs, then a 2x2 pool
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3),
        nn.ReLU(),  # (B, 32, H-2, W-2)
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),  # (B, 64, H-4, W-4)
        nn.MaxPool2d(2),  # (B, 64, (H-4)/2, (W-4)/2)
        nn.Dropout(dropout1),
        nn.Flatten(),  # (B, flat)
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Dropout(dropout2),
        nn.Linear(128, n_outputs),
    )


@register_model
def linear(input_shape: list[int], n_outputs: int, bias: bool = True) -> nn.Module:
    """A single affine map (the linear-regression recipes); bias=False fits y = a·x."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_outputs, bias=bias))


@cache
def _options_schema(name: str):
    """A pydantic model of the constructor's options, from its signature and annotations."""
    fn = MODELS[name]
    hints = get_type_hints(fn, include_extras=True)
    fields = {
        p.name: (hints[p.name], p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.name not in ("input_shape", "n_outputs")
    }
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return pydantic_model(f"{name}_options", __config__=config, **fields)


def check_options(name: str, options: dict[str, Any], key: str = "model") -> dict[str, Any]:
    """Validate a model's name and options (types and ranges) without building anything."""
    if name not in MODELS:
        raise ParamsError(f"{key}.name: unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    schema = _options_schema(name)
    try:
        schema.model_validate(options)
    except ValidationError as error:
        first = first_error(error)
        if first.type == "extra_forbidden":
            allowed = ", ".join(schema.model_fields) or "none"
            raise ParamsError(f"{key}.{first.where}: unknown option for model {name!r}; allowed: {allowed}") from None
        raise ParamsError(first.line(key)) from None
    return options


def create_model(name: str, input_shape: list[int], n_outputs: int, key: str = "model", **options) -> nn.Module:
    """Build a registered model; bad names or options raise ParamsError naming `key`. The model
    is first built on the meta device (no memory) to refuse absurd sizes before allocating."""
    check_options(name, options, key)
    fn = MODELS[name]
    try:
        with torch.device("meta"):
            n = count_parameters(fn(input_shape, n_outputs, **options))
    except ValueError as error:
        raise ParamsError(f"{key}: {error}") from None
    if n > MAX_PARAMETERS:
        raise ParamsError(
            f"{key}: {name} with these options has {n:,} parameters; at most {MAX_PARAMETERS:,} are allowed"
        )
    return fn(input_shape, n_outputs, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
