"""Models by name: `create_model(name, input_shape, n_outputs, **kwargs)`.

Every model returns raw outputs (logits for classification, values for
regression); the loss lives in training, not in the model.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from torch import nn

from torchrepro.errors import ParamsError

MODELS: dict[str, Callable[..., nn.Module]] = {}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor `fn(input_shape, n_outputs, **kwargs)` under its function name."""
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
def twolayernet(input_shape: list[int], n_outputs: int, hidden_size: int = 100) -> nn.Module:
    return TwoLayerNet(math.prod(input_shape), hidden_size, n_outputs)


@register_model
def mlp(
    input_shape: list[int], n_outputs: int, hidden_sizes: list[int] = (512, 256), activation: str = "relu"
) -> nn.Module:
    """flatten -> (Linear -> activation) per hidden size -> Linear."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    if not hidden_sizes or any(not isinstance(h, int) or h < 1 for h in hidden_sizes):
        raise ValueError(f"hidden_sizes must be a non-empty list of positive integers, got {hidden_sizes!r}")
    sizes = [math.prod(input_shape), *hidden_sizes]
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], n_outputs))
    return nn.Sequential(*layers)


@register_model
def cnn(input_shape: list[int], n_outputs: int, dropout1: float = 0.25, dropout2: float = 0.5) -> nn.Module:
    """The pytorch/examples MNIST shape: two 3x3 convs (32, 64), max-pool, dropout, 9216 -> 128 -> n."""
    if list(input_shape) != [1, 28, 28]:
        raise ValueError(f"cnn expects 1x28x28 images, the dataset gives {'x'.join(map(str, input_shape))}")
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(),  # (B, 32, 26, 26)
        nn.Conv2d(32, 64, 3), nn.ReLU(),  # (B, 64, 24, 24)
        nn.MaxPool2d(2),  # (B, 64, 12, 12)
        nn.Dropout(dropout1),
        nn.Flatten(),  # (B, 9216)
        nn.Linear(9216, 128), nn.ReLU(),
        nn.Dropout(dropout2),
        nn.Linear(128, n_outputs),
    )  # fmt: skip


@register_model
def linear(input_shape: list[int], n_outputs: int) -> nn.Module:
    """A single affine map: the linear-regression recipes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_outputs))


def create_model(name: str, input_shape: list[int], n_outputs: int, key: str = "model", **kwargs) -> nn.Module:
    """Build a registered model; bad names or kwargs raise ParamsError naming `key`."""
    if name not in MODELS:
        raise ParamsError(f"{key}.name: unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    fn = MODELS[name]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("input_shape", "n_outputs")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ParamsError(f"{key}.{unknown[0]}: unknown option for model {name!r}; allowed: {', '.join(allowed) or 'none'}")
    try:
        return fn(input_shape, n_outputs, **kwargs)
    except (ValueError, TypeError) as error:
        raise ParamsError(f"{key}: {error}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
