import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrepro import optim
from torchrepro.checkpoint import safe_load, to_bytes
from torchrepro.params import Train
from torchrepro.train import OPTIMIZERS, make_optimizer

from conftest import TORCH_OPTIMIZERS

CONFIGS = [
    Train(optimizer="sgd", lr=0.1),
    Train(optimizer="sgd", lr=0.1, momentum=0.9),
    Train(optimizer="sgd", lr=0.05, momentum=0.5, weight_decay=0.01),
    Train(optimizer="adam", lr=0.01),
    Train(optimizer="adam", lr=0.01, weight_decay=0.1),
    Train(optimizer="adamw", lr=0.01, weight_decay=0.1),
]


def test_every_registered_optimizer_has_a_twin():
    assert set(OPTIMIZERS) == set(TORCH_OPTIMIZERS)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def train_steps(model: nn.Module, optimizer, steps: int, skip: int = 0) -> None:
    """Steps skip+1 .. skip+steps of one fixed sequence of random batches."""
    generator = torch.Generator().manual_seed(1)
    for i in range(skip + steps):
        x, y = torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        if i < skip:
            continue
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.optimizer}-m{c.momentum}-wd{c.weight_decay}")
def test_same_parameters_as_torch_optim_bit_for_bit(cfg):
    ours, theirs = net(), net()
    train_steps(ours, make_optimizer(ours, cfg), 25)
    train_steps(theirs, TORCH_OPTIMIZERS[cfg.optimizer](theirs.parameters(), cfg), 25)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours[0].weight, net()[0].weight)  # the steps did move the weights


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4]], ids=["sgd-momentum", "adam"])
def test_state_round_trip_continues_exactly(tmp_path, cfg):
    """Save the optimizer after 5 steps, load it into a fresh one over the same weights, go on:
    the same weights as 10 uninterrupted steps. Plain tensors: weights_only loading accepts it."""
    uninterrupted = net()
    train_steps(uninterrupted, make_optimizer(uninterrupted, cfg), 10)

    model = net()
    first = make_optimizer(model, cfg)
    train_steps(model, first, 5)
    (tmp_path / "opt.pt").write_bytes(to_bytes(first.state_dict()))
    second = make_optimizer(model, cfg)
    second.load_state_dict(safe_load(tmp_path / "opt.pt"))
    train_steps(model, second, 5, skip=5)
    for a, b in zip(model.parameters(), uninterrupted.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_refuses_another_models_state():
    cfg = Train(optimizer="adam")
    small = nn.Linear(2, 1)
    opt = make_optimizer(small, cfg)
    with pytest.raises(ValueError, match="holds 4 parameters; this model has 2"):
        opt.load_state_dict(make_optimizer(net(), cfg).state_dict())


def test_a_parameter_without_gradient_is_left_alone():
    frozen, trained = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = optim.Adam([frozen, trained], lr=0.1)
    (trained**2).sum().backward()
    opt.step()
    assert torch.equal(frozen, torch.ones(3)) and not torch.equal(trained, torch.ones(3))
    opt.zero_grad()
    assert trained.grad is None
