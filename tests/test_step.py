"""The training step (train/step.py) on the CPU: what the eager loop and a CUDA graph both run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrepro.train.distributed import World
from torchrepro.train.step import Step, Tallies

CPU = torch.device("cpu")


def tiny_step(weight_init: float = 0.5, classification: bool = True) -> Step:
    model = nn.Linear(2, 3 if classification else 1)
    with torch.no_grad():
        model.weight.fill_(weight_init)
        model.bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy if classification else F.mse_loss
    return Step(model, optimizer, loss, Tallies(2, CPU, classification))


X = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
Y = torch.tensor([2, 0, 1])


def test_a_device_index_tallies_as_an_int_does():
    """A captured step's batch index is a tensor: the mask it adds by gives the same values."""
    by_int, by_tensor = Tallies(3, CPU, True), Tallies(3, CPU, True)
    for at, (loss, correct) in enumerate([(1.5, 2), (0.25, 1), (3.0, 0)]):
        by_int.add(at, torch.tensor(loss), torch.tensor(correct))
        by_tensor.add(torch.tensor(at), torch.tensor(loss), torch.tensor(correct))
    assert torch.equal(by_int.losses, by_tensor.losses) and torch.equal(by_int.correct, by_tensor.correct)
    assert by_int.means(4, World()) == (4.75 / 4, 3 / 4)
    by_int.zero()
    assert by_int.means(4, World()) == (0.0, 0.0)


def test_the_step_trains_and_tallies_the_batch():
    step = tiny_step()
    before = step.model.weight.detach().clone()
    out = step.model(X)
    expected_loss = F.cross_entropy(out, Y).item() * len(Y)
    step(X, Y, 1)
    assert not torch.equal(step.model.weight, before)  # the optimizer stepped
    assert step.tallies.losses.tolist() == [0.0, pytest.approx(expected_loss)]
    assert step.tallies.correct.item() == (out.argmax(1) == Y).sum().item()


def test_the_weight_scales_the_gradient_not_the_tallied_loss():
    plain, weighted = tiny_step(), tiny_step()
    plain(X, Y, 0)
    weighted(X, Y, 0, weight=0.5)
    start = torch.full_like(plain.model.weight, 0.5)
    torch.testing.assert_close(weighted.model.weight - start, (plain.model.weight - start) / 2)
    assert torch.equal(plain.tallies.losses, weighted.tallies.losses)


def test_an_empty_share_of_a_batch_steps_with_no_loss():
    """A rank's share of a short last batch can be empty: it still steps (DDP waits for every
    rank), with zero gradients and nothing tallied."""
    step = tiny_step(classification=False)
    before = [p.detach().clone() for p in step.model.parameters()]
    step(X[:0], Y[:0].float(), 0)
    assert all(torch.equal(p, b) for p, b in zip(step.model.parameters(), before))
    assert step.tallies.losses.tolist() == [0.0, 0.0] and step.tallies.means(1, World()) == (0.0, None)
