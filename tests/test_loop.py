import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrepro.core import determinism
from torchrepro.core.params import Named, Train
from torchrepro.models.checkpoint import safe_load, to_bytes
from torchrepro.models.inference import Split, predict
from torchrepro.models.nets import create_model
from torchrepro.normalize import prepare, store
from torchrepro.optim import make_optimizer, make_schedule
from torchrepro.train import graphs, loop
from torchrepro.train.loop import Trainer, TrainingDiverged, fit, seed_everything

from conftest import ROOT, blob_table, regression_table

CPU = torch.device("cpu")


def blob_splits(n: int = 90) -> tuple[Split, Split]:
    table = blob_table(n)
    x, y = table.x.astype(np.float32), table.y
    return Split.from_numpy(x[:60], y[:60], CPU), Split.from_numpy(x[60:], y[60:], CPU)


def regression_splits() -> tuple[Split, Split]:
    table = regression_table(26)
    x = ((table.x - table.x.mean(0)) / table.x.std(0)).astype(np.float32)
    y = table.y.astype(np.float32)
    return Split.from_numpy(x[:20], y[:20], CPU), Split.from_numpy(x[20:], y[20:], CPU)


def dropout_net() -> nn.Module:
    """Not a registered model: dropout makes the run depend on the global torch RNG too."""
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def make_trainer(seed=0, cfg=None, model_fn=None, task="classification", batch_size=16) -> Trainer:
    """What train.run does, on tiny in-memory data: seed, build, wrap."""
    cfg = cfg or Train(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=batch_size)
    seed_everything(seed)
    if task == "classification":
        model = (model_fn or (lambda: create_model("mlp", [4], 3, hidden_sizes=[16])))()
        train_split, test_split = blob_splits()
    else:
        model = create_model("linear", [2], 1)
        train_split, test_split = regression_splits()
    optimizer = make_optimizer(model.parameters(), cfg, CPU)
    trainer = Trainer(model, optimizer, train_split, test_split, task, cfg.batch_size, seed)
    trainer.schedule = make_schedule(optimizer, cfg, trainer.steps_per_epoch)
    return trainer


def state_bytes(trainer: Trainer) -> bytes:
    return to_bytes(trainer.model.state_dict())


def test_loss_decreases_on_tiny_data():
    trainer = make_trainer()
    history, seconds = fit(trainer, 8, progress=False)
    assert [row["epoch"] for row in history] == list(range(1, 9)) and len(seconds) == 8
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert history[-1]["test_accuracy"] > 0.9  # the blobs are well separated
    assert set(history[0]) == {"epoch", "train_loss", "test_loss", "train_accuracy", "test_accuracy"}


def test_regression_history_has_no_accuracy():
    history, _ = fit(make_trainer(task="regression", batch_size=5), 3, progress=False)
    assert set(history[0]) == {"epoch", "train_loss", "test_loss"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_same_seed_gives_identical_history_and_weights():
    runs = []
    for _ in range(2):  # one after the other, as two processes would: seed, build, train
        trainer = make_trainer(seed=5, model_fn=dropout_net)
        runs.append((fit(trainer, 3, progress=False)[0], state_bytes(trainer)))
    assert runs[0] == runs[1]


def test_different_seed_gives_a_different_run():
    a, b = make_trainer(seed=1), make_trainer(seed=2)
    assert fit(a, 2, progress=False)[0] != fit(b, 2, progress=False)[0]
    assert state_bytes(a) != state_bytes(b)


def test_batch_order_does_not_depend_on_the_global_rng():
    """The shuffle has its own generator seeded with the run's seed: dropout and initialization,
    which draw from the global generator, cannot move the batch order."""
    trainer = make_trainer(seed=3)
    torch.manual_seed(12345)
    expected = torch.randperm(60, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.randperm(60, generator=trainer.shuffle), expected)


# --- the fast loop against a textbook loop -----------------------------------------------------


def reference_loop(model, optimizer, split: Split, task: str, batch_size: int, seed: int, epochs: int, scheduler=None):
    """The plain loop: for each batch, forward, loss, zero_grad, backward, step. The batches are the
    ones Trainer uses: a torch.Generator seeded with the run's seed draws one randperm per epoch.
    A scheduler is stepped after each batch (OneCycleLR's way) or after each epoch."""
    device = split.x.device
    generator = torch.Generator(device=device).manual_seed(seed)
    epoch_losses, epoch_correct = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(split.y), generator=generator, device=device)
        total, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = split.x[idx], split.y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb) if task == "classification" else F.mse_loss(out[:, 0], yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
                scheduler.step()
            total += loss.item() * len(idx)
            if task == "classification":
                correct += (out.argmax(1) == yb).sum().item()
        epoch_losses.append(total / len(order))
        epoch_correct.append(correct / len(order))
        if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            scheduler.step()
    return epoch_losses, epoch_correct


def textbook_optimizer(params, cfg: Train, like: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer as pytorch/examples writes it: the class, by hand, with the kernel that
    `like` runs (fused or not: the same arithmetic in another order)."""
    classes = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "adadelta": torch.optim.Adadelta,
    }
    kernel = {"fused": True} if like.defaults.get("fused") else {}
    return classes[cfg.optimizer](params, lr=cfg.lr, **cfg.optimizer_options, **kernel)


def textbook_scheduler(optimizer, cfg: Train, steps_per_epoch: int, epochs: int):
    if cfg.scheduler is None:
        return None
    if cfg.scheduler.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, **cfg.scheduler.options)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)


@pytest.mark.parametrize("chunked", [False, True], ids=["one-gather", "chunks-of-2-batches"])
@pytest.mark.parametrize(
    "task, cfg",
    [
        ("classification", Train(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16)),  # 60 = 3x16 + 12
        ("classification", Train(optimizer="adam", lr=0.01, batch_size=7)),
        ("classification", Train(optimizer="adamw", lr=0.01, weight_decay=0.1, batch_size=60)),
        ("regression", Train(optimizer="sgd", lr=0.05, momentum=0.5, batch_size=3)),
        (
            "classification",
            Train(optimizer="adadelta", lr=1.0, batch_size=16, scheduler=Named(name="step", step_size=1, gamma=0.7)),
        ),
        ("classification", Train(optimizer="adam", lr=0.01, batch_size=16, scheduler=Named(name="onecycle"))),
    ],
    ids=["sgd-momentum", "adam", "adamw-full-batch", "regression-sgd", "adadelta-steplr", "adam-onecycle"],
)
def test_fast_loop_equals_the_textbook_loop(task, cfg, chunked, monkeypatch):
    epochs, seed = 3, 11
    if chunked:  # gather the shuffled split 2 batches at a time, as a large dataset would be
        sample_bytes = 4 * (4 if task == "classification" else 2)  # float32 features
        monkeypatch.setattr(loop, "CHUNK_BYTES", 2 * cfg.batch_size * sample_bytes)
    trainer = make_trainer(seed=seed, cfg=cfg, task=task)
    assert trainer.chunk == 2 * cfg.batch_size if chunked else trainer.chunk >= len(trainer.train)
    history, _ = fit(trainer, epochs, progress=False)

    reference = make_trainer(seed=seed, cfg=cfg, task=task)  # same initial weights
    assert state_bytes(reference) != state_bytes(trainer)  # the check below compares trained weights
    textbook = textbook_optimizer(reference.model.parameters(), cfg, like=trainer.optimizer)
    scheduler = textbook_scheduler(textbook, cfg, reference.steps_per_epoch, epochs)
    losses, accuracy = reference_loop(
        reference.model, textbook, reference.train, task, cfg.batch_size, seed, epochs, scheduler
    )

    for (name, fast), slow in zip(trainer.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-7, msg=name)
    assert [row["train_loss"] for row in history] == pytest.approx(losses, rel=1e-6)
    if task == "classification":
        assert [row["train_accuracy"] for row in history] == pytest.approx(accuracy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trainer_equals_the_textbook_loop_on_the_device():
    cfg, seed = Train(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16), 3
    device = torch.device("cuda")

    def on_device() -> Trainer:
        cpu = make_trainer(seed=seed, cfg=cfg)
        model = cpu.model.to(device)
        splits = [Split(s.x.to(device), s.y.to(device), device) for s in (cpu.train, cpu.test)]
        return Trainer(
            model, make_optimizer(model.parameters(), cfg, device), *splits, "classification", cfg.batch_size, seed
        )

    trainer, reference = on_device(), on_device()
    history, _ = fit(trainer, 2, progress=False)
    assert trainer.shuffle.device.type == "cuda"  # the permutation is drawn on the device
    textbook = textbook_optimizer(reference.model.parameters(), cfg, like=trainer.optimizer)
    losses, _ = reference_loop(reference.model, textbook, reference.train, "classification", cfg.batch_size, seed, 2)
    for fast, slow in zip(trainer.model.state_dict().values(), reference.model.state_dict().values()):
        assert fast.is_cuda
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert [row["train_loss"] for row in history] == pytest.approx(losses, rel=1e-5)


@pytest.mark.parametrize("method", ["unit", "global"])
def test_memory_mapped_and_in_memory_splits_train_the_same_bytes(tmp_path, digits, method, monkeypatch):
    """Stored uint8 pixels, gathered a few batches at a time from a memory map or from memory,
    give the model that the float32 inputs normalized at once give, byte for byte."""
    prepared = prepare.prepare(digits, 0.2, 0, method)
    store.save(prepared, tmp_path / "data")
    monkeypatch.setattr(loop, "CHUNK_BYTES", 3 * 8 * 28 * 28 * 4)  # 3 batches of 8 float32 inputs per gather
    cfg = Train(optimizer="adam", lr=0.01, batch_size=8)

    def trained(train: Split, test: Split) -> bytes:
        seed_everything(5)
        model = create_model("twolayernet", [1, 28, 28], 10, hidden_size=16)
        trainer = Trainer(model, make_optimizer(model.parameters(), cfg, CPU), train, test, "classification", 8, 5)
        assert trainer.chunk == 24
        fit(trainer, 2, progress=False)
        return state_bytes(trainer)

    def from_store(mmap: bool) -> bytes:
        data = store.load(tmp_path / "data", mmap=mmap)
        assert isinstance(data.x_train, np.memmap) == mmap and data.x_train.dtype == np.uint8
        splits = [
            Split.from_numpy(x, y, CPU, data.meta)
            for x, y in [(data.x_train, data.y_train), (data.x_test, data.y_test)]
        ]
        return trained(*splits)

    # What the float32 store held: the whole split normalized at once, in float32.
    norm = prepared.meta["normalize"]

    def as_float32(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32) / np.float32(255)
        return (x - np.float32(norm["mean"])) / np.float32(norm["std"])

    floats = trained(
        Split.from_numpy(as_float32(prepared.x_train), prepared.y_train, CPU),
        Split.from_numpy(as_float32(prepared.x_test), prepared.y_test, CPU),
    )
    assert from_store(mmap=True) == from_store(mmap=False) == floats


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_split_too_large_for_the_device_streams_from_the_host_to_the_same_bytes(tmp_path, digits, monkeypatch):
    """Eager on both sides (CUDA graphs need the split on the device), deterministic kernels."""
    device = torch.device("cuda")
    determinism.apply("portable", device)
    monkeypatch.setenv(graphs.ENV, "0")
    prepared = prepare.prepare(digits, 0.2, 0, "global")
    store.save(prepared, tmp_path / "data")
    data = store.load(tmp_path / "data")
    cfg = Train(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=8)

    def trained() -> tuple[bytes, Split]:
        train = Split.from_numpy(data.x_train, data.y_train, device, data.meta)
        test = Split.from_numpy(data.x_test, data.y_test, device, data.meta)
        seed_everything(5)
        model = create_model("twolayernet", [1, 28, 28], 10, hidden_size=16).to(device)
        trainer = Trainer(model, make_optimizer(model.parameters(), cfg, device), train, test, "classification", 8, 5)
        fit(trainer, 2, progress=False)
        return state_bytes(trainer), train

    on_device, resident = trained()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024, 1 << 40))  # 1 KiB free
    streamed, on_host = trained()
    assert resident.x.is_cuda and not on_host.x.is_cuda and on_host.x.dtype == torch.uint8
    assert streamed == on_device


def test_evaluate_reports_loss_and_accuracy_in_eval_mode():
    trainer = make_trainer(model_fn=dropout_net)
    loss, accuracy = trainer.evaluate(trainer.test)
    trainer.model.eval()
    with torch.no_grad():
        out = trainer.model(trainer.test.x)
    assert loss == pytest.approx(F.cross_entropy(out, trainer.test.y).item())
    assert accuracy == pytest.approx((out.argmax(1) == trainer.test.y).float().mean().item())
    assert trainer.evaluate(trainer.test) == (loss, accuracy)  # no dropout: the same every time


def test_predict_batches_give_the_same_outputs():
    trainer = make_trainer()
    torch.testing.assert_close(
        predict(trainer.model, trainer.train.x, batch_size=7), predict(trainer.model, trainer.train.x)
    )


# --- resuming ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        Train(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16),
        Train(optimizer="adam", lr=0.05, batch_size=16),
        Train(optimizer="adam", lr=0.05, batch_size=16, scheduler=Named(name="onecycle")),
        Train(optimizer="sgd", lr=0.05, batch_size=16, scheduler=Named(name="exponential", gamma=0.5)),
    ],
    ids=["sgd", "adam", "adam-onecycle", "sgd-exponential"],
)
def test_snapshot_restore_continues_exactly(tmp_path, cfg):
    """The optimizer's and the scheduler's state travel in the snapshot: the resumed run ends
    with the same bytes, learning rate included."""
    uninterrupted = make_trainer(seed=7, cfg=cfg, model_fn=dropout_net)
    full_history, _ = fit(uninterrupted, 2, progress=False)

    first = make_trainer(seed=7, cfg=cfg, model_fn=dropout_net)
    history, _ = fit(first, 1, progress=False)
    (tmp_path / "state.pt").write_bytes(to_bytes(first.snapshot(history)))  # as ResumeStore does
    del first

    resumed = make_trainer(seed=99, cfg=cfg, model_fn=dropout_net)  # other weights, other RNG states
    torch.rand(10)
    np.random.rand(3)
    history = resumed.restore(safe_load(tmp_path / "state.pt"))
    assert len(history) == 1
    history, seconds = fit(resumed, 2, history, progress=False)
    assert len(seconds) == 1  # only epoch 2 ran
    assert history == full_history
    assert state_bytes(resumed) == state_bytes(uninterrupted)
    assert to_bytes(resumed.optimizer.state_dict()) == to_bytes(uninterrupted.optimizer.state_dict())
    if cfg.scheduler is not None:
        assert resumed.schedule.scheduler.state_dict() == uninterrupted.schedule.scheduler.state_dict()


def test_fit_calls_back_after_every_epoch():
    calls = []
    fit(make_trainer(), 3, on_epoch_end=lambda epoch, history: calls.append((epoch, len(history))), progress=False)
    assert calls == [(1, 1), (2, 2), (3, 3)]


def test_a_loss_that_stops_being_finite_is_an_error_not_a_model():
    """lr 1e6 sends SGD to infinity in a step or two: fit stops with an error naming the epoch."""
    trainer = make_trainer(cfg=Train(optimizer="sgd", lr=1e6, batch_size=16))
    with pytest.raises(
        TrainingDiverged, match=r"^training diverged at epoch \d: the loss is .*(nan|inf).*; lower train.lr"
    ):
        fit(trainer, 5, progress=False)


def test_tqdm_environment_settings_apply_to_the_epoch_bar():
    """TQDM_DISABLE=1 turns the bar off. tqdm reads its environment once, when imported: a
    process for each setting, both at once."""
    code = "from test_loop import make_trainer; from torchrepro.train.loop import fit; fit(make_trainer(), 1)"

    def start(**env: str) -> subprocess.Popen:
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])} | env
        return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)

    shown, hidden = start(), start(TQDM_DISABLE="1")
    assert "epoch 1/1: 100%" in shown.communicate(timeout=300)[1]
    err = hidden.communicate(timeout=300)[1]
    assert shown.returncode == hidden.returncode == 0 and "epoch 1/1" not in err, err
