"""Print, as JSON, a SHA-256 of every kernel result the shipped recipes compute on the CPU.

Each shipped model kind (twolayernet, mlp with relu and sigmoid, cnn, linear) is built by
`create_model` as the train stage builds it, and runs one training step as the Trainer does:
forward, loss, backward, optimizer step. Every module's output, every parameter's gradient and
every parameter after the step is hashed on its own, so a changed kernel is named, not just
seen. Inputs come from numpy's PCG64 generator, which gives the same numbers on every platform.

Run it in a fresh process after `determinism.prepare_environment` (tests/test_kernels.py),
natively or under an emulated CPU: two runs that print the same JSON computed the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from torchrepro.core import determinism

determinism.prepare_environment(sys.argv[1] if len(sys.argv) > 1 else "portable", os.environ)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from torchrepro.core.params import Train  # noqa: E402
from torchrepro.models.nets import create_model  # noqa: E402
from torchrepro.optim import make_optimizer  # noqa: E402

# (model, options, input shape, outputs, optimizer, batch): the shipped recipes' shapes
RECIPES = {
    "twolayernet": ("twolayernet", {"hidden_size": 100}, [1, 28, 28], 10, {"optimizer": "sgd", "momentum": 0.9}, 100),
    "mlp_relu": ("mlp", {"hidden_sizes": [512, 256], "activation": "relu"}, [1, 28, 28], 10, {"optimizer": "adam"}, 64),
    "mlp_sigmoid": ("mlp", {"hidden_sizes": [16], "activation": "sigmoid"}, [4], 3, {"optimizer": "adam"}, 2),
    "cnn": ("cnn", {}, [1, 28, 28], 10, {"optimizer": "adam"}, 64),
    "linear": ("linear", {}, [1], 1, {"optimizer": "sgd"}, 5),
}


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def one_step(name: str, rng: np.random.Generator) -> dict[str, str]:
    model_name, options, shape, n_out, optim, batch = RECIPES[name]
    torch.manual_seed(0)  # initial weights and dropout masks
    model = create_model(model_name, shape, n_out, **options)
    optimizer = make_optimizer(model.parameters(), Train(lr=0.01, **optim), torch.device("cpu"))
    out: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if module_name:
            module.register_forward_hook(lambda m, i, o, key=module_name: out.update({f"{name}.{key}": digest(o)}))
    x = torch.from_numpy(rng.standard_normal((batch, *shape), dtype=np.float32))
    if n_out == 1:
        loss = F.mse_loss(model(x).squeeze(1), torch.from_numpy(rng.standard_normal(batch, dtype=np.float32)))
    else:
        logits = model(x)
        target = torch.from_numpy(rng.integers(0, n_out, batch))
        loss = F.cross_entropy(logits, target)
        out[f"{name}.correct"] = str(int((logits.argmax(1) == target).sum()))
    loss.backward()
    optimizer.step()
    out[f"{name}.loss"] = digest(loss)
    for param_name, param in model.named_parameters():
        out[f"{name}.{param_name}.grad"] = digest(param.grad)
        out[f"{name}.{param_name}.stepped"] = digest(param)
    return out


def main() -> None:
    rng = np.random.default_rng(20261204)
    determinism.apply(sys.argv[1] if len(sys.argv) > 1 else "portable", torch.device("cpu"))
    results = {"threads": str(torch.get_num_threads())}
    for name in RECIPES:
        results.update(one_step(name, rng))
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
