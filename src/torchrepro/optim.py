"""SGD (with momentum), Adam and AdamW: torch.optim's update rules, without torch.optim.

Why not torch.optim: the first call into any torch.optim optimizer imports torch._dynamo (its
methods are wrapped so torch.compile leaves them alone). That import costs every train stage
about 1 s and 120 MiB of resident memory, before one step has run; on 60,000 images it is what
pushed the CNN's train stage over 1 GiB. The updates below are the ones torch.optim performs on
CPU (its single-tensor path), op for op and in the same order, with dampening, Nesterov,
AMSGrad and maximize left out because no recipe uses them. tests/test_optim.py checks every
optimizer here against its torch.optim twin, bit for bit on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Optimizer:
    """The part of torch.optim.Optimizer's interface the trainer uses: zero_grad, step,
    state_dict and load_state_dict. State is kept per parameter, in the model's order."""

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay
        self.state: list[dict[str, Tensor | int]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Drop the gradients, as torch.optim's zero_grad() does by default (set_to_none)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, state in zip(self.params, self.state):
            if p.grad is not None:  # as torch.optim: a parameter without a gradient is left alone
                self.update(p, p.grad, state)

    def update(self, p: Tensor, grad: Tensor, state: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Plain tensors and numbers: loads with torch.load(weights_only=True)."""
        return {"state": [dict(s) for s in self.state]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["state"]
        if len(saved) != len(self.params):
            raise ValueError(f"optimizer state holds {len(saved)} parameters; this model has {len(self.params)}")
        self.state = [
            {k: v.to(p.device, p.dtype) if isinstance(v, Tensor) else v for k, v in s.items()}
            for p, s in zip(self.params, saved)
        ]  # fmt: skip


class SGD(Optimizer):
    """torch.optim.SGD(params, lr, momentum, weight_decay): dampening 0, no Nesterov."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum

    def update(self, p: Tensor, grad: Tensor, state: dict) -> None:
        if self.weight_decay:
            grad = grad.add(p, alpha=self.weight_decay)
        if self.momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad = grad.detach().clone()
            else:
                grad = state["momentum_buffer"].mul_(self.momentum).add_(grad)
        p.add_(grad, alpha=-self.lr)


class Adam(Optimizer):
    """torch.optim.Adam(params, lr, weight_decay) with betas (0.9, 0.999) and eps 1e-8, no AMSGrad."""

    decoupled_weight_decay = False

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):  # fmt: skip
        super().__init__(params, lr, weight_decay)
        self.betas, self.eps = betas, eps

    def update(self, p: Tensor, grad: Tensor, state: dict) -> None:
        beta1, beta2 = self.betas
        if not state:
            state |= {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        state["step"] += 1
        if self.weight_decay and self.decoupled_weight_decay:
            p.mul_(1 - self.lr * self.weight_decay)
        elif self.weight_decay:
            grad = grad.add(p, alpha=self.weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # Bias corrections in Python floats, as torch.optim computes them on CPU.
        step_size = self.lr / (1 - beta1 ** state["step"])
        denom = (exp_avg_sq.sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)


class AdamW(Adam):
    """torch.optim.AdamW(params, lr, weight_decay): the decay shrinks the weights directly
    instead of being added to the gradient. (torch's default decay of 0.01 is not assumed:
    params.yaml's weight_decay, 0 unless set, is always passed.)"""

    decoupled_weight_decay = True
