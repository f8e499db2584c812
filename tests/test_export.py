"""export: the exported program on raw inputs gives what the checkpoint gives on normalized inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from test_checkpoint import NOT_REGULAR, deadline, not_regular

from torchrepro import export, predict
from torchrepro.core.errors import DataError, ParamsError
from torchrepro.core.params import parse_params
from torchrepro.models.checkpoint import load_model, save_model
from torchrepro.models.nets import MODELS, count_parameters, create_model

from conftest import tiny_params_dict
from test_fuzz import assert_one_error, run_entry, snapshot

TINY = {"twolayernet": {"hidden_size": 8}, "mlp": {"hidden_sizes": [8], "activation": "tanh"}}
IMAGE, TABULAR = [1, 28, 28], [3]


def _builds(name: str, shape: list[int]) -> bool:
    try:
        create_model(name, shape, 2, **TINY.get(name, {}))
        return True
    except ParamsError:  # e.g. cnn on a table
        return False


# Every registered model, on images and on tables wherever it accepts them.
CASES = [(name, shape) for name in sorted(MODELS) for shape in (IMAGE, TABULAR) if _builds(name, shape)]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Each test's project is its tmp_path, where the params' relative paths lead."""
    monkeypatch.chdir(tmp_path)


def tiny_experiment(root, name: str, shape: list[int]) -> tuple[str, dict]:
    """params.yaml under root (the working folder) with one experiment, and its checkpoint on
    random weights."""
    experiment = f"{name}_{'image' if shape == IMAGE else 'tabular'}"
    raw = tiny_params_dict()
    model_cfg = {"name": name, **TINY.get(name, {})}
    raw["experiments"] = {experiment: {"dataset": "digits" if shape == IMAGE else "line", "model": model_cfg}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)

    torch.manual_seed(0)
    regression = shape == TABULAR and name == "linear"
    n_outputs = 1 if regression else (10 if shape == IMAGE else 3)
    model = create_model(name, shape, n_outputs, **TINY.get(name, {}))
    if shape == IMAGE:
        norm = {"method": "global", "scale": 1 / 255, "mean": 0.1307, "std": 0.3081}
        classes, features = [str(i) for i in range(10)], ["pixel"]
    else:  # per-feature statistics far from 0 and 1, so a wrong order or a missing step shows
        norm = {"method": "per_feature", "scale": 1.0, "mean": [5.0, -2.0, 100.0], "std": [2.0, 0.5, 30.0]}
        classes, features = ([] if regression else ["a", "b", "c"]), ["u", "v", "w"]
    info = {
        "experiment": experiment,
        "dataset": "x",
        "model": name,
        "model_kwargs": TINY.get(name, {}),
        "input_shape": shape,
        "n_outputs": n_outputs,
        "task": "regression" if regression else "classification",
        "classes": classes,
        "feature_names": features,
        "normalize": norm,
        "n_parameters": count_parameters(model),
    }
    save_model(params.paths.model_dir(experiment), model, info)
    return experiment, info


def raw_inputs(info: dict, n: int = 5) -> np.ndarray:
    """Raw values as a user has them: pixels 0-255, or features around their training mean."""
    rng = np.random.default_rng(1)
    if len(info["input_shape"]) == 3:
        return rng.integers(0, 256, size=(n, *info["input_shape"])).astype(np.float64)
    norm = info["normalize"]
    return rng.normal(norm["mean"], norm["std"], size=(n, len(norm["mean"])))


def checkpoint_outputs(root, experiment: str, raw: np.ndarray) -> torch.Tensor:
    """The reference: the checkpoint on inputs normalized as predict normalizes them."""
    model, info = load_model(root / "models" / experiment)
    with torch.no_grad():
        return model(predict.model_inputs(raw, info))


@pytest.mark.parametrize("name, shape", CASES, ids=[f"{n}-{'image' if s == IMAGE else 'tabular'}" for n, s in CASES])
def test_exported_program_matches_checkpoint(tmp_path, capsys, name, shape):
    experiment, info = tiny_experiment(tmp_path, name, shape)
    out = tmp_path / "exported.pt2"
    export.main(["--params", str(tmp_path / "params.yaml"), "--experiment", experiment, "--out", str(out)])
    assert capsys.readouterr().out.startswith(f"wrote {out} (torch.export,")

    program = torch.export.load(out)  # a torch.export program, not the TorchScript fallback
    raw = raw_inputs(info)  # batch 5: the export traced batch 2, so the batch size is free
    got = program.module()(torch.from_numpy(raw).float())
    expected = checkpoint_outputs(tmp_path, experiment, raw)
    if shape == IMAGE:  # pixels take training's own float32 steps: the very logits
        assert torch.equal(got, expected)
    else:  # feature rows: the store's float64 normalization, folded into float32
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    _, packed_info = export.load_exported(out)
    assert packed_info == json.loads((tmp_path / "models" / experiment / "model.json").read_text())


def test_falls_back_to_torchscript_and_says_so(tmp_path, capsys, monkeypatch):
    experiment, info = tiny_experiment(tmp_path, "mlp", TABULAR)

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator, for this test")

    monkeypatch.setattr(torch.export, "export", fail)
    out_file = tmp_path / "m.pt2"
    export.main(["--params", str(tmp_path / "params.yaml"), "--experiment", experiment, "--out", str(out_file)])
    out, err = capsys.readouterr()
    assert "torch.export failed for mlp_tabular (unsupported operator, for this test); wrote TorchScript" in err
    assert out.startswith(f"wrote {tmp_path / 'm.pt'} (TorchScript")
    module, _ = export.load_exported(tmp_path / "m.pt")
    raw = raw_inputs(info)
    got = module(torch.from_numpy(raw).float())
    torch.testing.assert_close(got, checkpoint_outputs(tmp_path, experiment, raw), rtol=1e-4, atol=1e-5)


def test_untrained_experiment_is_an_error(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    with pytest.raises(SystemExit) as exit:
        export.main(["--params", str(tmp_path / "params.yaml"), "--experiment", "line_linear"])
    assert exit.value.code == 2
    assert "has not been trained yet" in capsys.readouterr().err


# --- Bad input, as tests/test_fuzz.py checks it -------------------------------------------------


def export_cli(root, experiment: str, *extra: str) -> list[str]:
    return ["-m", "torchrepro.export", "--params", str(root / "params.yaml"), "--experiment", experiment, *extra]


def test_a_damaged_model_json_is_one_error_and_nothing_is_written(tmp_path):
    experiment, _ = tiny_experiment(tmp_path, "linear", TABULAR)
    info_path = tmp_path / "models" / experiment / "model.json"
    text = info_path.read_text()
    info_path.write_text(text.replace('"mean": [\n      5.0', '"mean": [\n      5.5'))  # normalize's first mean
    assert info_path.read_text() != text
    before = snapshot(tmp_path)
    outcome = run_entry(export_cli(tmp_path, experiment, "--out", str(tmp_path / "x.pt2")), tmp_path)
    says = f"{info_path.relative_to(tmp_path)}: its json_sha256 does not match its content: the file is damaged"
    assert_one_error(outcome, says)
    assert f"dvc repro train@{experiment}" in outcome.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", list(NOT_REGULAR))
def test_params_must_be_a_regular_file(tmp_path, kind):
    experiment, _ = tiny_experiment(tmp_path, "linear", TABULAR)
    (tmp_path / "params.yaml").unlink()
    not_regular(kind, tmp_path / "params.yaml")
    before = snapshot(tmp_path)
    with deadline():
        outcome = run_entry(export_cli(tmp_path, experiment), tmp_path)
    assert_one_error(outcome, f"{tmp_path / 'params.yaml'}")
    assert f"{NOT_REGULAR[kind]}, not a params file" in outcome.err
    assert snapshot(tmp_path) == before


def test_load_exported_checks_the_model_json_inside(tmp_path):
    experiment, info = tiny_experiment(tmp_path, "linear", TABULAR)
    model, saved = load_model(tmp_path / "models" / experiment)
    out, _ = export.export_model(model, saved | {"classes": ["x"]}, tmp_path / "edited.pt2")  # digest now stale
    with pytest.raises(DataError, match="edited.pt2: the model.json inside is missing or damaged; export"):
        export.load_exported(out)
    os.mkfifo(tmp_path / "fifo.pt2")
    with deadline(), pytest.raises(DataError, match="fifo.pt2: is a named pipe"):
        export.load_exported(tmp_path / "fifo.pt2")
