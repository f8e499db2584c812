import os
import re
import time
import tracemalloc

import pytest
import yaml
from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml
from pydantic import ValidationError

from torchrepro.core.errors import ParamsError, UserError
from torchrepro.core.params import Paths, load_params, parse_params, read_yaml

from conftest import ROOT


def params_error(raw: dict) -> str:
    """The ParamsError message for `raw`; every one must be a single line."""
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_params_yaml_validates():
    params = load_params(ROOT / "params.yaml", root=ROOT)
    assert params.experiments and params.datasets
    for name, exp in params.experiments.items():
        assert exp.dataset in params.datasets, name


def test_tiny_params_validate_with_defaults(params_dict):
    params = parse_params(params_dict)
    assert params.experiment("digits_mlp").train.optimizer_options == {}  # the optimizer's own defaults
    assert params.determinism == "portable" and params.launcher == "python"
    assert params.dataset("line").split == "none"
    assert params.experiment("digits_mlp").model.options == {"hidden_sizes": [16], "activation": "relu"}
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
        ((), "seeds", "seeds", "datasets, determinism, device, experiments, launcher, paths, seed"),
        ((), "devise", "devise", "datasets, determinism, device, experiments, launcher, paths, seed"),
        (
            ("paths",),
            "model",
            "paths.model",
            "logs, metrics, models, plots, predictions, processed, raw, reports, resume",
        ),
        (("experiments", "digits_mlp"), "modle", "experiments.digits_mlp.modle", "dataset, device, model, seed, train"),
        (("datasets", "digits"), "splt", "datasets.digits.splt", "normalize, source, split"),
        (("datasets", "digits", "split"), "test_sise", "datasets.digits.split.test_sise", "seed, stratify, test_size"),
    ],
)
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
        ("train", "epochs", 10**9, "epochs: Input should be less than or equal to 100000"),
        ("train", "batch_size", 2**40, "batch_size: Input should be less than or equal to 1048576"),
        ("train", "optimizer", 3, "optimizer: Input should be a valid string"),
    ],
)
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
    params_dict["datasets"]["digits"]["normalize"] = "standardize"
    message = params_error(params_dict)
    assert "datasets.digits.normalize: Input should be 'none', 'unit', 'global' or 'per_feature'" in message


@pytest.mark.parametrize(
    "where, value",
    [
        (("experiments", "digits_mlp", "train", "lr"), float("inf")),
        (("experiments", "digits_mlp", "train", "lr"), float("nan")),
        (("experiments", "digits_mlp", "train", "momentum"), float("inf")),  # an optimizer option
        (("experiments", "digits_mlp", "model", "dropout"), float("nan")),  # a model option
        (("datasets", "digits", "split", "test_size"), float("-inf")),
        (("experiments", "digits_mlp", "model", "hidden_sizes", 0), float("inf")),
    ],
)
def test_non_finite_numbers_are_refused_anywhere(params_dict, where, value):
    node = params_dict
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = ".".join(map(str, where))
    assert params_error(params_dict) == f"params.yaml: {path}: must be a finite number, not NaN or infinity"


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_seeds_must_fit_numpy(params_dict, seed):
    params_dict["seed"] = seed
    assert params_error(params_dict).startswith("params.yaml: seed: Input should be ")


def test_determinism_is_portable_or_host(params_dict):
    params_dict["determinism"] = "exact"
    assert "determinism: Input should be 'portable' or 'host'" in params_error(params_dict)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("seed: 0\nseed: 1\n", "duplicate key 'seed'"),
        ("datasets:\n  a: {source: iris}\n  a: {source: iris}\n", "duplicate key 'a'"),
        ("experiments: {e: {dataset: a, dataset: b}}\n", "duplicate key 'dataset'"),
    ],
)
def test_duplicate_keys_are_refused_as_dvc_does(tmp_path, text, problem):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: not valid YAML at line ") and str(info.value).endswith(problem)


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
    assert "defined under datasets: digits, line. A new dataset needs its own block under datasets:" in message


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
    with pytest.raises(
        ParamsError, match="unknown experiment 'nope'; defined under experiments: digits_mlp, line_linear"
    ):
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
    paths = Paths(raw="R", processed="P", models="M", metrics="X", predictions="Q", plots="G", logs="L", resume="S")
    assert str(paths.raw_dir("d")) == "R/d"
    assert str(paths.processed_dir("d")) == "P/d"
    assert str(paths.model_dir("e")) == "M/e"
    assert str(paths.train_live_dir("e")) == "X/e/train"
    assert str(paths.evaluate_live_dir("e")) == "X/e/evaluate"
    assert str(paths.predictions_file("e")) == "Q/e.csv"
    assert str(paths.plots_dir("e")) == "G/e"
    assert str(paths.log_file("e")) == "L/e.json"
    assert str(paths.resume_dir("e")) == "S/e"


@pytest.mark.parametrize("key", ["device", "seed", "determinism", "launcher"])
def test_the_settings_dvc_yaml_reads_must_be_written_out(params_dict, key):
    """dvc.yaml lists these as params (or builds the train command from them): DVC fails on a
    missing one, so no default here may hide it."""
    del params_dict[key]
    assert params_error(params_dict) == f"params.yaml: {key}: Field required"


# --- Read as DVC reads it ----------------------------------------------------------------------

# Scalars that YAML 1.1 (PyYAML) and YAML 1.2 (ruamel.yaml, which DVC uses) read differently, or
# that are easy to misread: the stages must get what dvc.lock records.
TRICKY = ["010", "0o10", "1_000", "yes", "no", "on", "off", "Yes", "1e3", "1.5e-3", ".inf", "-.inf", "~", "null"]
TRICKY += ["0x1F", "0b11", "2001-12-14", "2001-12-14T21:59:43Z", "1:20", "+1", "-0", "'010'", "TRUE", "y"]


@pytest.mark.parametrize("scalar", TRICKY)
def test_a_scalar_reads_as_dvc_reads_it(tmp_path, scalar):
    text = f"value: {scalar}\nlist:\n- {scalar}\n- {scalar}\nnested:\n  a: {scalar}\n"
    assert read_yaml(tmp_path / "params.yaml", text) == parse_yaml(text, "params.yaml")


@pytest.mark.parametrize("scalar", ["=", "<<"])  # YAML 1.1's value and merge keys, as a plain value
def test_a_scalar_dvc_refuses_is_refused(tmp_path, scalar):
    text = f"value: {scalar}\n"
    with pytest.raises(YAMLFileCorruptedError):
        parse_yaml(text, "params.yaml")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML at line 1, column 8: could not determine"):
        read_yaml(tmp_path / "params.yaml", text)


def test_a_yaml_1_1_document_reads_as_dvc_reads_it(tmp_path):
    text = "%YAML 1.1\n---\nvalue: 010\nflag: yes\n"
    assert read_yaml(tmp_path / "params.yaml", text) == parse_yaml(text, "params.yaml")


def test_the_shipped_params_read_as_dvc_reads_them():
    text = (ROOT / "params.yaml").read_text()
    assert read_yaml(ROOT / "params.yaml", text) == parse_yaml(text, "params.yaml")


def test_epochs_010_trains_the_ten_epochs_dvc_lock_records(tmp_path, params_dict):
    params_dict["experiments"]["line_linear"]["train"]["epochs"] = 1
    text = yaml.safe_dump(params_dict).replace("epochs: 1\n", "epochs: 010\n")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").experiment("line_linear").train.epochs == 10
    assert parse_yaml(text, "params.yaml")["experiments"]["line_linear"]["train"]["epochs"] == 10


def test_a_date_where_a_string_belongs_names_the_key(params_dict, tmp_path):
    text = yaml.safe_dump(params_dict).replace("device: cpu", "device: 2001-12-14", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"params.yaml: device: Input should be a valid string"):
        load_params(tmp_path / "params.yaml")


# --- Aliases -------------------------------------------------------------------------------------


def laughs(levels: int, width: int = 10) -> str:
    """A "billion laughs": each level an alias list of the one below, width**levels leaves."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(laughs(9) + "experiments: {e: {train: {betas: *l9}}}\n")  # 10**10 leaves
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ParamsError) as info:
            load_params(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10  # expanded, it would not finish at all
    assert peak < 20 * 2**20
    assert str(info.value).startswith(f"{path}: at line ")
    assert "its aliases would expand to more than 100,000 values" in str(info.value)


def test_aliases_that_expand_to_a_params_file_size_are_read(tmp_path, params_dict):
    text = laughs(3) + yaml.safe_dump(params_dict)  # 1,000 leaves: an odd file, not a bomb
    assert read_yaml(tmp_path / "p.yaml", text)["l3"][9][9][9] == ["lol"] * 10
    shared = "betas: &b [0.9, 0.999]\nmerged: &m {a: 1}\nx: {<<: *m, b: 2}\ny: *b\n"
    assert read_yaml(tmp_path / "p.yaml", shared) == parse_yaml(shared, "p.yaml")


def test_an_alias_to_its_own_node_is_refused(tmp_path):
    with pytest.raises(ParamsError, match=r"p.yaml: at line 1, column 7: an alias repeats a node that holds it"):
        read_yaml(tmp_path / "p.yaml", "loop: &l [1, [*l]]\n")


# --- The params file itself ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_the_params_file_must_be_a_regular_file(tmp_path, kind):
    path = tmp_path / "params.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    elif kind == "folder":
        path.mkdir()
    else:
        path = "/dev/zero"  # reading it would never end
    what = {"fifo": "a named pipe (FIFO)", "folder": "a folder", "device": "a character device"}[kind]
    with pytest.raises(UserError, match=re.escape(f"{path}: is {what}, not a params file; pass a YAML file with")):
        load_params(path)


# --- The launcher: a command, not shell ---------------------------------------------------------


@pytest.mark.parametrize(
    "launcher",
    ["python", "python3.11", "torchrun --standalone --nproc_per_node=2", "torchrun --nproc-per-node 2", "srun python"],
)
def test_a_launcher_of_plain_words_is_accepted(params_dict, launcher):
    params_dict["launcher"] = launcher
    assert parse_params(params_dict).launcher == launcher


@pytest.mark.parametrize(
    "launcher",
    ["touch pwned; python", "python && x", "python | tee", "python $HOME", "python `x`", "python $(x)", "python > f"]
    + ["python 'a b'", 'python "a"', "python\nx", "python\tx", " python", "python ", "", "python #x", "py*"],
)
def test_a_launcher_with_shell_syntax_is_refused(params_dict, launcher):
    params_dict["launcher"] = launcher
    message = params_error(params_dict)
    assert message.startswith("params.yaml: launcher: must be a command and its arguments: words of letters")
    assert f"(got {launcher!r})" in message


# --- Paths stay in the project and out of its own folders ---------------------------------------


@pytest.mark.parametrize(
    "value, says",
    [
        ("/some/dir", "'/some/dir' is absolute; give a path relative to the project's folder"),
        ("src/torchrepro", "'src/torchrepro' lies in src/ (the library)"),
        ("src", "'src' lies in src/ (the library)"),
        ("./stages/out", "'./stages/out' lies in stages/ (the stage scripts)"),
        ("tests", "'tests' lies in tests/ (the tests)"),
        (".git/x", "'.git/x' lies in .git/ (git's repository)"),
        (".dvc", "'.dvc' lies in .dvc/ (DVC's cache and settings)"),
        ("data/csv/out", "'data/csv/out' lies in data/csv/ (the CSV sources)"),
        ("data/images/out", "'data/images/out' lies in data/images/ (the image folders)"),
        ("data", "'data' holds data/csv/ (the CSV sources)"),
        ("out/../..", "must name a folder of its own"),
    ],
)
@pytest.mark.parametrize("key", ["models", "resume"])
def test_a_path_outside_the_project_or_into_its_own_folders_is_refused(params_dict, key, value, says):
    params_dict["paths"][key] = value
    assert params_error(params_dict).startswith(f"params.yaml: paths.{key}: ")
    assert says in params_error(params_dict)


@pytest.mark.parametrize("value", ["data/models", "out/models", "models2", "srcs", ".resume"])
def test_a_path_of_its_own_is_accepted(params_dict, value):
    params_dict["paths"]["models"] = value
    assert parse_params(params_dict).paths.models == value


def project_with_link(tmp_path, params_dict, target) -> tuple:
    """tmp_path as a project with src/ and data/csv/, and paths.models a link to `target`."""
    (tmp_path / "src" / "torchrepro").mkdir(parents=True)
    (tmp_path / "data" / "csv").mkdir(parents=True)
    (tmp_path / "models-link").symlink_to(target)
    params_dict["paths"]["models"] = "models-link"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize(
    "target, says",
    [
        ("..", "'models-link' leads to "),
        (".", "'models-link' leads to "),
        ("src/torchrepro", "'models-link' leads into src/ (the library) through a link"),
        ("data", "which holds data/csv/ (the CSV sources)"),
    ],
)
def test_a_path_that_leads_out_through_a_link_is_refused(tmp_path, params_dict, target, says):
    path = project_with_link(tmp_path, params_dict, target)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(f"{path}: paths.models: ") and says in str(info.value), str(info.value)


def test_a_link_inside_the_project_is_accepted(tmp_path, params_dict):
    (tmp_path / "data" / "models").mkdir(parents=True)
    assert load_params(project_with_link(tmp_path, params_dict, "data/models")).paths.models == "models-link"


def test_paths_are_checked_in_the_given_project_folder(tmp_path, params_dict):
    """`root` is where the stages run: a link there is followed, wherever the params file is."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "models-link").symlink_to("src")
    params_dict["paths"]["models"] = "models-link"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    assert load_params(tmp_path / "params.yaml").paths.models == "models-link"  # no link in tmp_path
    with pytest.raises(ParamsError, match="leads into src/"):
        load_params(tmp_path / "params.yaml", root=project)
