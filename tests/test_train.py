import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrepro import optim, train
from torchrepro.checkpoint import safe_load, to_bytes
from torchrepro.devices import resolve_device
from torchrepro.errors import ParamsError
from torchrepro.models import create_model
from torchrepro.params import Train, parse_params
from torchrepro.train import Split, Trainer, fit, make_optimizer

from conftest import TORCH_OPTIMIZERS, blob_table, regression_table

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
    train.seed_everything(seed)
    if task == "classification":
        model = (model_fn or (lambda: create_model("mlp", [4], 3, hidden_sizes=[16])))()
        train_split, test_split = blob_splits()
    else:
        model = create_model("linear", [2], 1)
        train_split, test_split = regression_splits()
    return Trainer(model, make_optimizer(model, cfg), train_split, test_split, task, cfg.batch_size, seed)


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


def reference_loop(model, optimizer, split: Split, task: str, batch_size: int, seed: int, epochs: int):
    """The plain loop: for each batch, forward, loss, zero_grad, backward, step. The batches are the
    ones Trainer uses: a torch.Generator seeded with the run's seed draws one randperm per epoch."""
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
            total += loss.item() * len(idx)
            if task == "classification":
                correct += (out.argmax(1) == yb).sum().item()
        epoch_losses.append(total / len(order))
        epoch_correct.append(correct / len(order))
    return epoch_losses, epoch_correct


@pytest.mark.parametrize("chunked", [False, True], ids=["one-gather", "chunks-of-2-batches"])
@pytest.mark.parametrize(
    "task, cfg",
    [
        ("classification", Train(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16)),  # 60 = 3x16 + 12
        ("classification", Train(optimizer="adam", lr=0.01, batch_size=7)),
        ("classification", Train(optimizer="adamw", lr=0.01, weight_decay=0.1, batch_size=60)),
        ("regression", Train(optimizer="sgd", lr=0.05, momentum=0.5, batch_size=3)),
    ],
    ids=["sgd-momentum", "adam", "adamw-full-batch", "regression-sgd"],
)
def test_fast_loop_equals_the_textbook_loop(task, cfg, chunked, monkeypatch):
    epochs, seed = 3, 11
    if chunked:  # gather the shuffled split 2 batches at a time, as a large dataset would be
        sample_bytes = 4 * (4 if task == "classification" else 2)  # float32 features
        monkeypatch.setattr(train, "CHUNK_BYTES", 2 * cfg.batch_size * sample_bytes)
    trainer = make_trainer(seed=seed, cfg=cfg, task=task)
    assert trainer.chunk == 2 * cfg.batch_size if chunked else trainer.chunk >= len(trainer.train)
    history, _ = fit(trainer, epochs, progress=False)

    reference = make_trainer(seed=seed, cfg=cfg, task=task)  # same initial weights, fresh optimizer
    assert state_bytes(reference) != state_bytes(trainer)  # the check below compares trained weights
    textbook = TORCH_OPTIMIZERS[cfg.optimizer](reference.model.parameters(), cfg)  # torch.optim, not ours
    losses, accuracy = reference_loop(reference.model, textbook, reference.train, task, cfg.batch_size, seed, epochs)

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
        splits = [Split(s.x.to(device), s.y.to(device)) for s in (cpu.train, cpu.test)]
        return Trainer(model, make_optimizer(model, cfg), *splits, "classification", cfg.batch_size, seed)

    trainer, reference = on_device(), on_device()
    history, _ = fit(trainer, 2, progress=False)
    assert trainer.shuffle.device.type == "cuda"  # the permutation is drawn on the device
    textbook = TORCH_OPTIMIZERS[cfg.optimizer](reference.model.parameters(), cfg)
    losses, _ = reference_loop(reference.model, textbook, reference.train, "classification", cfg.batch_size, seed, 2)
    for fast, slow in zip(trainer.model.state_dict().values(), reference.model.state_dict().values()):
        assert fast.is_cuda
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert [row["train_loss"] for row in history] == pytest.approx(losses, rel=1e-5)


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
    torch.testing.assert_close(train.predict(trainer.model, trainer.train.x, batch_size=7),
                               train.predict(trainer.model, trainer.train.x))  # fmt: skip


# --- resuming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_snapshot_restore_continues_exactly(tmp_path, optimizer):
    cfg = Train(optimizer=optimizer, lr=0.05, momentum=0.9 if optimizer == "sgd" else 0.0, batch_size=16)
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


def test_fit_calls_back_after_every_epoch():
    calls = []
    fit(make_trainer(), 3, on_epoch_end=lambda epoch, history: calls.append((epoch, len(history))), progress=False)
    assert calls == [(1, 1), (2, 2), (3, 3)]


def test_write_history(tmp_path):
    rows = [train.history_row(1, (0.5, 0.25), (0.75, 0.125)), train.history_row(2, (1 / 3, None), (2.0, None))]
    train.write_history(tmp_path / "h.csv", rows[:1])
    assert (tmp_path / "h.csv").read_text() == "epoch,train_loss,test_loss,train_accuracy,test_accuracy\n1,0.5,0.75,0.25,0.125\n"
    train.write_history(tmp_path / "h.csv", rows[1:])
    assert (tmp_path / "h.csv").read_text() == "epoch,train_loss,test_loss\n2,0.333333,2\n"


# --- optimizers and devices -------------------------------------------------------------------


def test_make_optimizer_builds_the_named_one():
    model = nn.Linear(2, 1)
    sgd = make_optimizer(model, Train(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.01))
    assert isinstance(sgd, optim.SGD)
    assert (sgd.lr, sgd.momentum, sgd.weight_decay) == (0.5, 0.9, 0.01)
    assert sgd.params == list(model.parameters())
    adam = make_optimizer(model, Train(optimizer="adam", lr=0.1))
    assert isinstance(adam, optim.Adam) and not adam.decoupled_weight_decay and adam.lr == 0.1
    assert isinstance(make_optimizer(model, Train(optimizer="adamw")), optim.AdamW)


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(ParamsError, match=r"^experiments\.e\.train\.optimizer: unknown optimizer 'rmsprop'; allowed: sgd, adam, adamw$"):
        make_optimizer(nn.Linear(2, 1), Train(optimizer="rmsprop"), key="experiments.e.train")


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_momentum_is_for_sgd_only(optimizer):
    with pytest.raises(ParamsError, match=r"^train\.momentum: only sgd takes momentum"):
        make_optimizer(nn.Linear(2, 1), Train(optimizer=optimizer, momentum=0.9))


def test_cpu_device():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_an_error_naming_the_key(name):
    with pytest.raises(ParamsError, match=rf"^experiments\.e\.device: '{name}' requested but CUDA is not available"):
        resolve_device(name, key="experiments.e.device")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has Apple MPS")
def test_mps_without_mps_is_an_error():
    with pytest.raises(ParamsError, match=r"^device: 'mps' requested but Apple MPS is not available"):
        resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="an accelerator is present")
def test_auto_is_cpu_here():
    assert resolve_device("auto") == torch.device("cpu")


# --- the stage function -------------------------------------------------------------------------


def test_run_writes_model_history_and_log(tiny_params):
    log = train.run(tiny_params, "digits_mlp", progress=False)
    paths = tiny_params.paths
    assert (paths.model_dir("digits_mlp") / "model.pt").is_file()
    info = json.loads((paths.model_dir("digits_mlp") / "model.json").read_text())
    assert info["model"] == "mlp" and info["model_kwargs"] == {"hidden_sizes": [16], "activation": "relu"}
    assert info["input_shape"] == [1, 28, 28] and info["n_outputs"] == 10 and info["seed"] == 0
    lines = paths.history_file("digits_mlp").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,test_loss,train_accuracy,test_accuracy" and len(lines) == 3
    assert json.loads(paths.log_file("digits_mlp").read_text()) == log
    assert log["device"] == "cpu" and log["epochs_run"] == 2 and log["resumed_from_epoch"] == 0
    assert not paths.resume_dir("digits_mlp").exists()  # cleared once training finished


def test_run_fixes_the_malloc_thresholds(monkeypatch, tiny_params):
    calls = []
    monkeypatch.setattr(train, "fix_malloc_thresholds", lambda: calls.append("fixed"))
    train.run(tiny_params, "line_linear", progress=False)
    assert calls == ["fixed"]


def test_run_twice_gives_identical_model_bytes(tiny_params):
    model_pt = tiny_params.paths.model_dir("digits_mlp") / "model.pt"
    train.run(tiny_params, "digits_mlp", progress=False)
    first = model_pt.read_bytes()
    train.run(tiny_params, "digits_mlp", progress=False)
    assert model_pt.read_bytes() == first


def test_killed_run_resumes_to_the_same_model(tiny_params, monkeypatch):
    experiment = "digits_mlp"
    paths = tiny_params.paths
    train.run(tiny_params, experiment, progress=False)
    expected = (paths.model_dir(experiment) / "model.pt").read_bytes()
    expected_history = paths.history_file(experiment).read_text()
    for path in (paths.model_dir(experiment) / "model.pt", paths.history_file(experiment)):
        path.unlink()

    real_epoch, calls = Trainer.train_epoch, []

    def dies_in_epoch_2(self, progress=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_params, experiment, progress=False)
    assert list(paths.resume_dir(experiment).glob("*.pt"))  # epoch 1 was saved
    assert not (paths.model_dir(experiment) / "model.pt").exists()
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)

    log = train.run(tiny_params, experiment, progress=False)
    assert log["resumed_from_epoch"] == 1 and log["epochs_run"] == 1
    assert (paths.model_dir(experiment) / "model.pt").read_bytes() == expected
    assert paths.history_file(experiment).read_text() == expected_history


def test_run_refuses_an_unknown_model_naming_the_key(tiny_params, params_dict):
    params_dict["experiments"]["digits_mlp"]["model"]["name"] = "mlpp"
    params = parse_params(params_dict)
    with pytest.raises(ParamsError, match=r"^experiments\.digits_mlp\.model\.name: unknown model 'mlpp'"):
        train.run(params, "digits_mlp", progress=False)
    assert not params.paths.model_dir("digits_mlp").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_run_on_a_missing_device_names_the_experiment_key(tiny_params, params_dict):
    params_dict["experiments"]["digits_mlp"]["device"] = "cuda"
    params = parse_params(params_dict)
    with pytest.raises(ParamsError, match=r"^experiments\.digits_mlp\.device: 'cuda' requested"):
        train.run(params, "digits_mlp", progress=False)
