"""The train stage function: what it writes, byte determinism, resume and its errors."""

import json
import os
import shutil

import pytest
import torch

from torchrepro.core.devices import resolve_device
from torchrepro.core.errors import ParamsError
from torchrepro.core.params import parse_params
from torchrepro.train import stage
from torchrepro.train.loop import Trainer, TrainingDiverged


def read_tsv(path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_run_writes_model_metrics_and_log(tiny_params):
    log = stage.run(tiny_params, "digits_mlp", progress=False)
    paths = tiny_params.paths
    assert (paths.model_dir("digits_mlp") / "model.pt").is_file()
    info = json.loads((paths.model_dir("digits_mlp") / "model.json").read_text())
    assert info["model"] == "mlp" and info["model_kwargs"] == {"hidden_sizes": [16], "activation": "relu"}
    assert info["input_shape"] == [1, 28, 28] and info["n_outputs"] == 10 and info["seed"] == 0
    live = paths.train_live_dir("digits_mlp")
    # dvclive: a TSV per metric, one row per epoch (step = epoch), and the last epoch's summary.
    loss = read_tsv(live / "plots" / "metrics" / "train" / "loss.tsv")
    assert loss[0] == ["step", "loss"] and [row[0] for row in loss[1:]] == ["1", "2"]
    assert (live / "plots" / "metrics" / "test" / "accuracy.tsv").is_file()
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 2 and set(summary) == {"train", "test", "step"}
    assert summary["test"]["accuracy"] == float(read_tsv(live / "plots" / "metrics" / "test" / "accuracy.tsv")[-1][1])
    assert not (live / "dvc.yaml").exists() and not (live / "report.html").exists()
    assert json.loads(paths.log_file("digits_mlp").read_text()) == log
    assert log["device"] == "cpu" and log["epochs_run"] == 2 and log["resumed_from_epoch"] == 0
    assert log["determinism"] == "portable" and log["threads"] == torch.get_num_threads()


def test_regression_logs_loss_only(tiny_params):
    stage.run(tiny_params, "line_linear", progress=False)
    metrics = tiny_params.paths.train_live_dir("line_linear") / "plots" / "metrics"
    assert sorted(p.relative_to(metrics).as_posix() for p in metrics.rglob("*.tsv")) == [
        "test/loss.tsv",
        "train/loss.tsv",
    ]


def test_run_twice_gives_identical_bytes(tiny_params):
    paths = tiny_params.paths
    files = [paths.model_dir("digits_mlp") / "model.pt", paths.train_live_dir("digits_mlp") / "metrics.json"]
    stage.run(tiny_params, "digits_mlp", progress=False)
    first = [f.read_bytes() for f in files]
    shutil.rmtree(paths.resume_dir("digits_mlp"))  # else the final checkpoint would be reused
    log = stage.run(tiny_params, "digits_mlp", progress=False)
    assert log["epochs_run"] == 2
    assert [f.read_bytes() for f in files] == first


def dies_in_epoch(n: int, monkeypatch):
    real_epoch, calls = Trainer.train_epoch, []

    def dying(self, progress=None):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_epoch(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", dying)
    return real_epoch


def test_killed_run_resumes_to_the_same_bytes(tiny_params, monkeypatch):
    experiment, paths = "digits_mlp", tiny_params.paths
    stage.run(tiny_params, experiment, progress=False)
    outputs = [paths.model_dir(experiment) / "model.pt", *sorted(paths.train_live_dir(experiment).rglob("*.*"))]
    expected = {p: p.read_bytes() for p in outputs}
    for p in paths.resume_dir(experiment).iterdir():
        p.unlink()
    for p in outputs:  # DVC removes a stage's outputs before it runs the stage
        p.unlink()

    real_epoch = dies_in_epoch(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        stage.run(tiny_params, experiment, progress=False)
    assert list(paths.resume_dir(experiment).glob("*.pt"))  # epoch 1 was saved
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)

    log = stage.run(tiny_params, experiment, progress=False)
    assert log["resumed_from_epoch"] == 1 and log["epochs_run"] == 1
    assert {p: p.read_bytes() for p in outputs} == expected  # the dvclive history was replayed


def test_finished_training_is_not_redone_before_dvc_records_it(tiny_params, monkeypatch, tmp_path):
    """Killed after training but before DVC recorded the stage: the final checkpoint is kept,
    so the rerun writes the outputs again without training an epoch."""
    experiment, paths = "digits_mlp", tiny_params.paths
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")  # an earlier record, older than the run
    stage.run(tiny_params, experiment, progress=False)
    model_pt = paths.model_dir(experiment) / "model.pt"
    expected = model_pt.read_bytes()
    model_pt.unlink()
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, progress=None: pytest.fail("trained again"))
    log = stage.run(tiny_params, experiment, progress=False)
    assert log["resumed_from_epoch"] == 2 and log["epochs_run"] == 0
    assert model_pt.read_bytes() == expected


def test_a_run_dvc_recorded_trains_again_to_the_same_bytes(tiny_params, monkeypatch, tmp_path):
    """`dvc repro -f` after DVC recorded the run: dvc.lock is newer than the final checkpoint,
    so the rerun trains every epoch instead of replaying the checkpoint."""
    experiment, paths = "line_linear", tiny_params.paths
    monkeypatch.chdir(tmp_path)
    stage.run(tiny_params, experiment, progress=False)
    outputs = [paths.model_dir(experiment) / "model.pt", *sorted(paths.train_live_dir(experiment).rglob("*.*"))]
    expected = {p: p.read_bytes() for p in outputs}
    (checkpoint,) = paths.resume_dir(experiment).glob("*.pt")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")  # DVC records the stage after it ran
    written = checkpoint.stat().st_mtime_ns
    os.utime(tmp_path / "dvc.lock", ns=(written + 10**9, written + 10**9))  # the clock may be coarse
    log = stage.run(tiny_params, experiment, progress=False)
    assert log["resumed_from_epoch"] == 0 and log["epochs_run"] == 3
    assert {p: p.read_bytes() for p in outputs} == expected


def with_epochs(params_dict, experiment: str, epochs: int, scheduler: dict | None):
    train = params_dict["experiments"][experiment]["train"]
    train["epochs"] = epochs
    if scheduler is not None:
        train["scheduler"] = scheduler
    return parse_params(params_dict)


@pytest.mark.parametrize(
    "scheduler, continued",
    [
        (None, True),
        ({"name": "step", "step_size": 1, "gamma": 0.5}, True),  # the same schedule at any length
        ({"name": "cosine"}, False),  # its T_max is the epoch count: a longer run has another schedule
        ({"name": "onecycle"}, False),  # likewise its total_steps
    ],
)
def test_more_epochs_continue_a_shorter_run_to_the_bytes_of_a_run_from_scratch(
    tiny_params, params_dict, capsys, scheduler, continued
):
    experiment, paths = "digits_mlp", tiny_params.paths
    stage.run(with_epochs(params_dict, experiment, 4, scheduler), experiment, progress=False)
    outputs = [paths.model_dir(experiment) / "model.pt", *sorted(paths.train_live_dir(experiment).rglob("*.*"))]
    from_scratch = {p: p.read_bytes() for p in outputs}
    shutil.rmtree(paths.resume_dir(experiment))
    for p in outputs:
        p.unlink()

    stage.run(with_epochs(params_dict, experiment, 2, scheduler), experiment, progress=False)
    capsys.readouterr()
    log = stage.run(with_epochs(params_dict, experiment, 4, scheduler), experiment, progress=False)
    assert (log["resumed_from_epoch"], log["epochs_run"]) == ((2, 2) if continued else (0, 4))
    assert ("continued a shorter run from its epoch 2" in capsys.readouterr().err) == continued
    assert {p: p.read_bytes() for p in outputs} == from_scratch


def test_a_damaged_resume_checkpoint_is_ignored_and_training_starts_over(tiny_params, monkeypatch, capsys):
    experiment, paths = "digits_mlp", tiny_params.paths
    real_epoch = dies_in_epoch(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        stage.run(tiny_params, experiment, progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    (checkpoint,) = paths.resume_dir(experiment).glob("*.pt")
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    data[len(data) // 2 + 1] ^= 0x01  # two flipped bytes: torch would load them without a word
    checkpoint.write_bytes(bytes(data))
    log = stage.run(tiny_params, experiment, progress=False)
    assert "warning: ignoring resume checkpoint" in capsys.readouterr().err
    assert log["resumed_from_epoch"] == 0 and log["epochs_run"] == 2


def test_other_code_does_not_resume(tiny_params, monkeypatch):
    """The fingerprint holds a digest of the training code: a checkpoint made by other code
    is not resumed (DVC reruns training when that code changes, and so must we)."""
    experiment = "line_linear"
    stage.run(tiny_params, experiment, progress=False)
    monkeypatch.setattr(stage, "code_digest", lambda: "other code")
    log = stage.run(tiny_params, experiment, progress=False)
    assert log["resumed_from_epoch"] == 0 and log["epochs_run"] == 3


def files_under(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def diverging(params_dict, tmp_path):
    """line_linear with a learning rate whose loss overflows at epoch 5 (of 10)."""
    params_dict["experiments"]["line_linear"]["train"].update(lr=1e4, epochs=10)
    return parse_params(params_dict), TrainingDiverged, "training diverged at epoch 5"


def unusable_resume_folder(params_dict, tmp_path):
    """A file where the resume folder belongs: the checkpoint at the end of epoch 1 fails."""
    params = parse_params(params_dict)
    shutil.rmtree(params.paths.resume_dir("line_linear"))
    params.paths.resume_dir("line_linear").write_text("not a folder")
    return params, FileExistsError, "File exists"


@pytest.mark.parametrize("failure", [diverging, unusable_resume_folder])
def test_a_failed_run_leaves_the_previous_metrics_and_model(tiny_params, params_dict, tmp_path, failure):
    """dvclive writes each epoch in place while training; a run that fails after some epochs
    puts the previous files back byte for byte, instead of leaving its own epochs in git."""
    experiment, paths = "line_linear", tiny_params.paths
    stage.run(tiny_params, experiment, progress=False)
    live, model_dir = paths.train_live_dir(experiment), paths.model_dir(experiment)
    before = {"live": files_under(live), "model": files_under(model_dir)}
    params, error, message = failure(params_dict, tmp_path)
    with pytest.raises(error, match=message):
        stage.run(params, experiment, progress=False)
    assert {"live": files_under(live), "model": files_under(model_dir)} == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_first_run_leaves_no_metrics(tiny_params, params_dict, tmp_path):
    params, _, _ = diverging(params_dict, tmp_path)
    with pytest.raises(TrainingDiverged):
        stage.run(params, "line_linear", progress=False)
    assert not params.paths.train_live_dir("line_linear").exists()
    assert not params.paths.model_dir("line_linear").exists()


def test_interrupted_run_puts_the_previous_metrics_back(tiny_params, monkeypatch):
    """Ctrl-C too: the next run resumes from the checkpoint and replays its epochs anyway."""
    experiment, paths = "digits_mlp", tiny_params.paths
    stage.run(tiny_params, experiment, progress=False)
    before = files_under(paths.train_live_dir(experiment))
    shutil.rmtree(paths.resume_dir(experiment))
    dies_in_epoch(2, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        stage.run(tiny_params, experiment, progress=False)
    assert files_under(paths.train_live_dir(experiment)) == before


def test_a_bad_checkpoint_interval_is_one_error(tiny_params, monkeypatch):
    monkeypatch.setenv("TORCHREPRO_CHECKPOINT_EVERY_S", "soon")
    with pytest.raises(ParamsError, match=r"^TORCHREPRO_CHECKPOINT_EVERY_S='soon': expected seconds"):
        stage.run(tiny_params, "line_linear", progress=False)


def test_run_refuses_an_unknown_model_naming_the_key(tiny_params, params_dict):
    params_dict["experiments"]["digits_mlp"]["model"]["name"] = "mlpp"
    params = parse_params(params_dict)
    with pytest.raises(ParamsError, match=r"^experiments\.digits_mlp\.model\.name: unknown model 'mlpp'"):
        stage.run(params, "digits_mlp", progress=False)
    assert not params.paths.model_dir("digits_mlp").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_run_on_a_missing_device_names_the_experiment_key(tiny_params, params_dict):
    params_dict["experiments"]["digits_mlp"]["device"] = "cuda"
    params = parse_params(params_dict)
    with pytest.raises(ParamsError, match=r"^experiments\.digits_mlp\.device: 'cuda' requested"):
        stage.run(params, "digits_mlp", progress=False)


# --- devices ---------------------------------------------------------------------------------


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
