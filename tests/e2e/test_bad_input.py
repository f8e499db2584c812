"""Bad input stops the pipeline with one clear line, runs nothing unsafe and loses nothing."""

from __future__ import annotations

import hashlib
import json

import pytest

from torchrepro.models.checkpoint import signed

EVALUATE_METRICS = "metrics/iris_mlp/evaluate/metrics.json"
OUTPUTS = ("models/iris_mlp/model.pt", "logs/iris_mlp.json", "metrics/iris_mlp/train/plots/metrics/train/loss.tsv")


def error_lines(text: str) -> list[str]:
    """The stage's own `error: ...` lines (DVC's are `ERROR: ...`)."""
    return [line for line in text.splitlines() if line.startswith("error:")]


class Payload:
    """Unpickled without weights_only, this opens (creates) the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_tampered_model_is_refused_and_its_payload_never_runs(workspace, tmp_path):
    import torch

    marker = tmp_path / "payload-ran"
    model_pt = workspace / "models/iris_mlp/model.pt"
    state = torch.load(model_pt, weights_only=True)
    model_pt.unlink()  # write a new file, never through a link into the DVC cache
    torch.save({**state, "extra": Payload(str(marker))}, model_pt)
    info_json = workspace / "models/iris_mlp/model.json"  # whoever can write model.pt can update the digests
    info = signed(json.loads(info_json.read_text()) | {"sha256": hashlib.sha256(model_pt.read_bytes()).hexdigest()})
    info_json.unlink()
    info_json.write_text(json.dumps(info))
    metrics_before = workspace.digest(EVALUATE_METRICS)

    result = workspace.python("stages/evaluate.py", "iris_mlp", check=False)
    assert result.returncode == 2, result.output
    [line] = error_lines(result.stderr)
    assert "models/iris_mlp/model.pt" in line and "refused to load" in line
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert workspace.digest(EVALUATE_METRICS) == metrics_before

    torch.load(model_pt, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


def rename_lr(params: dict) -> None:
    train = params["experiments"]["iris_mlp"]["train"]
    train["lrr"] = train.pop("lr")


def unknown_model(params: dict) -> None:
    params["experiments"]["iris_mlp"]["model"]["name"] = "mlpp"


def zero_epochs(params: dict) -> None:
    params["experiments"]["iris_mlp"]["train"]["epochs"] = 0


def top_level_typo(params: dict) -> None:
    params["devise"] = "cpu"


def optimizer_option(params: dict) -> None:
    params["experiments"]["iris_mlp"]["train"]["momentum"] = 0.9  # Adam takes no momentum


def undefined_dataset(params: dict) -> None:
    params["experiments"]["iris_mlp"]["dataset"] = "fashion-mnist"


def shell_launcher(params: dict) -> None:
    params["launcher"] = "touch pwned; python"  # DVC runs `${launcher} stages/train.py ...` in a shell


# Each case runs `dvc repro` in a real repo (about 5 s); tests/test_fuzz.py checks every bad
# param in-process, so the default suite keeps three here and the rest run with -m slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "edit, key, says",
    [
        pytest.param(rename_lr, "experiments.iris_mlp.train.lrr", "unknown key", id="typo-key"),
        pytest.param(
            unknown_model, "experiments.iris_mlp.model.name", "unknown model 'mlpp'", id="unknown-model", marks=SLOW
        ),
        pytest.param(
            zero_epochs, "experiments.iris_mlp.train.epochs", "greater than or equal to 1", id="zero-epochs", marks=SLOW
        ),
        pytest.param(top_level_typo, "devise", "unknown key", id="top-level-typo", marks=SLOW),
        pytest.param(
            optimizer_option, "experiments.iris_mlp.train.momentum", "optimizer Adam's options", id="optimizer-option"
        ),
        pytest.param(
            undefined_dataset,
            "experiments.iris_mlp.dataset",
            "unknown dataset 'fashion-mnist'",
            id="undefined-dataset",
            marks=SLOW,
        ),
        pytest.param(shell_launcher, "launcher", "no shell syntax", id="shell-launcher"),
    ],
)
def test_bad_param_stops_at_validate_with_the_key_and_loses_nothing(workspace, reproduced, edit, key, says):
    params = workspace.params()
    edit(params)
    workspace.write_params(params)

    result = workspace.dvc("repro", check=False)
    assert result.returncode != 0
    assert workspace.ran(result.output) == {"validate"}  # the first stage: nothing else ran
    [line] = error_lines(result.stderr)
    assert key in line and says in line, line
    assert "exited with 2" in result.output and "Traceback" not in result.output
    # No stage ran, so DVC removed no outputs: everything is as it was, with nothing to restore.
    for rel in OUTPUTS:
        assert workspace.digest(rel) == reproduced.digest(rel), rel
    assert not (workspace / "pwned").exists()


def test_invalid_yaml_fails_before_any_stage_runs(workspace, reproduced):
    params_yaml = workspace / "params.yaml"
    good = params_yaml.read_text()
    params_yaml.write_text(good.replace("epochs: 2}", "epochs: 2", 1))  # an unclosed flow mapping

    result = workspace.dvc("repro", check=False)
    assert result.returncode != 0
    assert "params.yaml" in result.output and workspace.ran(result.output) == set()
    # A stage run by hand says the same in one line, with the position.
    stage = workspace.python("stages/train.py", "iris_mlp", check=False)
    assert stage.returncode == 2
    [line] = error_lines(stage.stderr)
    assert "params.yaml: not valid YAML at line" in line

    params_yaml.write_text(good)
    assert workspace.dvc_json("status") == {}
    assert workspace.digest("models/iris_mlp/model.pt") == reproduced.digest("models/iris_mlp/model.pt")
