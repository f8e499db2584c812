import pytest
import yaml
from pydantic import ValidationError

from torchrepro.errors import ParamsError
from torchrepro.params import Paths, load_params, parse_params

from conftest import ROOT


def params_error(raw: dict) -> str:
    """The ParamsError message for `raw`; every one must be a single line."""
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_params_yaml_validates():
    params = load_params(ROOT / "params.yaml")
    assert params.experiments and params.datasets
    for name, exp in params.experiments.items():
        assert exp.dataset in params.datasets, name


def test_tiny_params_validate_with_defaults(params_dict):
    params = parse_params(params_dict)
    assert params.experiment("digits_mlp").train.momentum == 0.0  # default
    assert params.dataset("line").split == "none"
    assert params.experiment("digits_mlp").model.kwargs == {"hidden_sizes": [16], "activation": "relu"}
    assert params.dataset("line").source.options["features"] == ["x"]


def test_experiment_overrides_device_and_seed(params_dict):
    params_dict["experiments"]["line_linear"] |= {"device": "cpu", "seed": 7}
    params_dict["device"] = "auto"
    params = parse_params(params_dict)
    assert params.device_for("line_linear") == "cpu" and params.seed_for("line_linear") == 7
    assert params.device_for("digits_mlp") == "auto" and params.seed_for("digits_mlp") == 0


@pytest.mark.parametrize(
    "where, typo, path, allowed",
    [
        ((), "seeds", "seeds", "datasets, device, experiments, paths, seed"),
        (("paths",), "model", "paths.model", "logs, metrics, models, plots, processed, raw, reports, resume"),
        (("experiments", "digits_mlp", "train"), "epoch", "experiments.digits_mlp.train.epoch",
         "batch_size, checkpoint_every_s, epochs, lr, momentum, optimizer, weight_decay"),
        (("experiments", "digits_mlp"), "modle", "experiments.digits_mlp.modle",
         "dataset, device, model, seed, train"),
        (("datasets", "digits"), "splt", "datasets.digits.splt", "normalize, source, split"),
        (("datasets", "digits", "split"), "test_sise", "datasets.digits.split.test_sise", "seed, test_size"),
    ],
)  # fmt: skip
def test_unknown_key_names_its_path_and_the_allowed_keys(params_dict, where, typo, path, allowed):
    node = params_dict
    for key in where:
        node = node[key]
    node[typo] = 1
    message = params_error(params_dict)
    assert f"{path}: unknown key" in message
    assert message.endswith(f"allowed: {allowed}")


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("train", "epochs", "3", "epochs: Input should be a valid integer (got '3')"),
        ("train", "epochs", 2.5, "epochs: Input should be a valid integer"),
        ("train", "epochs", True, "epochs: Input should be a valid integer"),  # not silently 1
        ("train", "epochs", 0, "epochs: Input should be greater than or equal to 1 (got 0)"),
        ("train", "lr", 0.0, "lr: Input should be greater than 0"),
        ("train", "lr", -0.1, "lr: Input should be greater than 0"),
        ("train", "lr", "fast", "lr: Input should be a valid number"),
        ("train", "batch_size", 0, "batch_size: Input should be greater than or equal to 1"),
        ("train", "momentum", 1.0, "momentum: Input should be less than 1"),
        ("train", "optimizer", 3, "optimizer: Input should be a valid string"),
    ],
)  # fmt: skip
def test_bad_training_values(params_dict, section, key, value, expected):
    params_dict["experiments"]["digits_mlp"][section][key] = value
    assert f"experiments.digits_mlp.{section}.{expected}" in params_error(params_dict)


@pytest.mark.parametrize("test_size", [0, 0.0, 1, 1.0, 1.5, -0.2])
def test_test_size_must_be_strictly_between_0_and_1(params_dict, test_size):
    params_dict["datasets"]["digits"]["split"]["test_size"] = test_size
    message = params_error(params_dict)
    assert message.startswith("params.yaml: datasets.digits.split.test_size: ")
    assert "(and" not in message  # the `none` alternative is not reported as a second problem


def test_split_must_be_a_mapping_or_none(params_dict):
    params_dict["datasets"]["digits"]["split"] = "all"
    message = params_error(params_dict)
    assert message.startswith("params.yaml: datasets.digits.split: ")
    assert "'none'" in message and "'all'" in message


def test_normalize_method_is_checked(params_dict):
    params_dict["datasets"]["digits"]["normalize"] = "minmax"
    assert "datasets.digits.normalize: " in params_error(params_dict)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", ""])
def test_unknown_device_string(params_dict, device):
    params_dict["device"] = device
    message = params_error(params_dict)
    assert message.startswith(f"params.yaml: device: unknown device {device!r}")
    assert "allowed: auto, cpu, cuda, cuda:N or mps" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_device_strings(params_dict, device):
    params_dict["experiments"]["digits_mlp"]["device"] = device
    assert parse_params(params_dict).device_for("digits_mlp") == device


def test_unknown_device_in_an_experiment(params_dict):
    params_dict["experiments"]["line_linear"]["device"] = "tpu"
    assert "experiments.line_linear.device: unknown device 'tpu'" in params_error(params_dict)


def test_experiment_with_undefined_dataset(params_dict):
    params_dict["experiments"]["digits_mlp"]["dataset"] = "digts"
    message = params_error(params_dict)
    assert "experiments.digits_mlp.dataset: unknown dataset 'digts'" in message
    assert message.endswith("defined under datasets: digits, line")


def test_model_needs_a_name(params_dict):
    params_dict["experiments"]["digits_mlp"]["model"] = {"hidden_sizes": [3]}
    assert "experiments.digits_mlp.model.name: Field required" in params_error(params_dict)


def test_missing_section(params_dict):
    del params_dict["experiments"]
    assert "experiments: Field required" in params_error(params_dict)


def test_more_problems_are_counted_on_the_same_line(params_dict):
    params_dict["seed"] = "0"
    params_dict["experiments"]["digits_mlp"]["train"]["lr"] = 0
    message = params_error(params_dict)
    assert message.startswith("params.yaml: ") and message.endswith("(and 1 more)")


def test_unknown_experiment_or_dataset_lookup(params_dict):
    params = parse_params(params_dict)
    with pytest.raises(ParamsError, match="unknown experiment 'nope'; defined under experiments: digits_mlp, line_linear"):
        params.experiment("nope")
    with pytest.raises(ParamsError, match="unknown dataset 'nope'; defined under datasets: digits, line"):
        params.dataset("nope")


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ndatasets: {a: [1, 2}\n")
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML at line 2") and "\n" not in message


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="expected a mapping at the top level, got list"):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: file not found; run from the project root or pass --params"):
        load_params(tmp_path / "nope.yaml")


def test_load_params_reads_a_file(tmp_path, params_dict):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params_dict))
    assert load_params(path) == parse_params(params_dict)
    params_dict["experiments"]["line_linear"]["train"]["epochs"] = 0
    path.write_text(yaml.safe_dump(params_dict))
    with pytest.raises(ParamsError, match=rf"^{path}: experiments\.line_linear\.train\.epochs: "):
        load_params(path)


def test_params_are_frozen(params_dict):
    params = parse_params(params_dict)
    with pytest.raises(ValidationError, match="frozen"):
        params.experiment("line_linear").train.epochs = 5


def test_paths_are_built_from_the_roots():
    paths = Paths(raw="R", processed="P", models="M", metrics="X", plots="G", logs="L", resume="S")
    assert str(paths.raw_dir("d")) == "R/d"
    assert str(paths.processed_dir("d")) == "P/d"
    assert str(paths.model_dir("e")) == "M/e"
    assert str(paths.metrics_file("e")) == "X/e.json"
    assert str(paths.history_file("e")) == "X/history/e.csv"
    assert str(paths.predictions_file("e")) == "X/predictions/e.csv"
    assert str(paths.plots_dir("e")) == "G/e"
    assert str(paths.log_file("e")) == "L/e.json"
    assert str(paths.resume_dir("e")) == "S/e"
