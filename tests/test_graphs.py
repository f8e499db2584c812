"""CUDA graphs of the training step: when they are used, why not otherwise, and on a GPU that
graphed training gives the eager loop's results, the same bytes twice, and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrepro.core import determinism
from torchrepro.core.params import Named, Train
from torchrepro.models.checkpoint import to_bytes
from torchrepro.models.inference import Split
from torchrepro.models.nets import create_model
from torchrepro.optim import make_optimizer, make_schedule
from torchrepro.train import graphs
from torchrepro.train.loop import Trainer, fit, seed_everything

from conftest import blob_table

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_trainer(device: str = "cpu", seed: int = 0, **train) -> Trainer:
    """An MLP on 270 blobs (batches of 16: 16 full ones and a short one)."""
    cfg = Train(**{"optimizer": "adam", "lr": 0.01, "batch_size": 16, **train})
    where = torch.device(device)
    table = blob_table(300)
    x, y = table.x.astype(np.float32), table.y
    seed_everything(seed)
    model = create_model("mlp", [4], 3, hidden_sizes=[32]).to(where)
    optimizer = make_optimizer(model.parameters(), cfg, where)
    trainer = Trainer(
        model,
        optimizer,
        Split.from_numpy(x[:270], y[:270], where),
        Split.from_numpy(x[270:], y[270:], where),
        "classification",
        cfg.batch_size,
        seed,
    )
    trainer.schedule = make_schedule(optimizer, cfg, trainer.steps_per_epoch)
    return trainer


def why_not(trainer: Trainer) -> str | None:
    return graphs.why_not(
        trainer.optimizer, trainer.schedule, trainer.world.size, len(trainer.train) // trainer.batch_size
    )


def test_a_cpu_trainer_runs_the_eager_loop_without_a_word(capsys):
    assert make_trainer().graphed is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("train", "reason"),
    [
        ({"scheduler": Named(name="step", step_size=1)}, "a learning-rate scheduler changes the learning rate"),
        ({"optimizer": "adagrad", "foreach": True}, "Adagrad has no capturable option"),
        ({"optimizer": "rmsprop"}, "RMSprop runs with capturable=False"),  # as on the CPU
        ({"optimizer": "sgd", "batch_size": 90}, "an epoch has 3 or fewer full batches"),
    ],
)
def test_why_the_step_cannot_be_captured(train, reason):
    assert reason in why_not(make_trainer(**train))


def test_capturable_steps_and_the_switch(monkeypatch):
    assert why_not(make_trainer(optimizer="sgd", momentum=0.9)) is None  # no host state
    monkeypatch.setenv(graphs.ENV, "0")
    assert why_not(make_trainer(optimizer="sgd")) == f"{graphs.ENV}=0"


# --- On a GPU ---------------------------------------------------------------------------


@pytest.fixture
def deterministic_cuda():
    determinism.apply("portable", torch.device("cuda"))


def train_on_cuda(monkeypatch, graphed: bool, epochs: int = 3, **train) -> tuple[Trainer, list[dict]]:
    monkeypatch.setenv(graphs.ENV, "1" if graphed else "0")
    trainer = make_trainer("cuda", **train)
    history, _ = fit(trainer, epochs, progress=False)
    assert (trainer.graphed is not None) == graphed
    return trainer, history


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_graphed_training_gives_the_eager_results(monkeypatch, deterministic_cuda, optimizer):
    graphed, graphed_history = train_on_cuda(monkeypatch, True, optimizer=optimizer)
    eager, eager_history = train_on_cuda(monkeypatch, False, optimizer=optimizer)
    for name, tensor in eager.model.state_dict().items():
        torch.testing.assert_close(graphed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for ours, theirs in zip(graphed_history, eager_history, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.gpu
@cuda
def test_graphed_training_gives_the_same_bytes_twice_and_resumes_exactly(monkeypatch, deterministic_cuda):
    first, history = train_on_cuda(monkeypatch, True)
    second, again = train_on_cuda(monkeypatch, True)
    assert to_bytes(first.model.state_dict()) == to_bytes(second.model.state_dict()) and history == again

    stopped, partial = train_on_cuda(monkeypatch, True, epochs=2)
    resumed = make_trainer("cuda")
    resumed_history = resumed.restore(stopped.snapshot(partial))
    history_after, _ = fit(resumed, 3, resumed_history, progress=False)
    assert resumed.graphed is not None
    assert to_bytes(resumed.model.state_dict()) == to_bytes(first.model.state_dict()) and history_after == history
