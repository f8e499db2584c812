"""The entry points as a user runs them: `python stages/X.py ...` in a subprocess.

Each subprocess that imports torch costs seconds on a small machine, so all of them start
together in one module fixture and the tests below only read their results.
"""

import copy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from torchrepro.normalize import prepare, store

from conftest import ROOT, digit_table, tiny_params_dict

STAGES = sorted(p.stem for p in (ROOT / "stages").glob("*.py"))
OUTPUT_ROOTS = ("raw", "processed", "models", "metrics", "predictions", "plots", "logs", "reports", "resume")


@dataclass
class Case:
    stage: str
    args: list[str]
    edit: Callable[[dict], None]  # makes the mistake in a params dict
    expected: str  # what the one error line must contain
    with_data: bool = False  # processed data present, so the run gets past loading it


def set_in(path: list, value):
    def edit(raw: dict) -> None:
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


CASES = {
    "unknown-key": Case(
        "download",
        ["digits"],
        set_in(["datasets", "digits", "normalise"], "global"),
        "datasets.digits.normalise: unknown key; allowed: normalize, source, split",
    ),
    "epochs-0": Case(
        "train",
        ["digits_mlp"],
        set_in(["experiments", "digits_mlp", "train", "epochs"], 0),
        "experiments.digits_mlp.train.epochs: Input should be greater than or equal to 1 (got 0)",
    ),
    "unknown-model": Case(
        "train",
        ["digits_mlp"],
        set_in(["experiments", "digits_mlp", "model", "name"], "mlpp"),
        "experiments.digits_mlp.model.name: unknown model 'mlpp'; allowed: ",
        with_data=True,
    ),
    "experiment-with-unknown-dataset": Case(
        "evaluate",
        ["digits_mlp"],
        set_in(["experiments", "digits_mlp", "dataset"], "digts"),
        "experiments.digits_mlp.dataset: unknown dataset 'digts'; defined under datasets: digits, line",
    ),
    "validate-optimizer-option": Case(
        "validate",
        ["logs/params.ok"],
        set_in(["experiments", "digits_mlp", "train", "momentum"], 0.9),
        "experiments.digits_mlp.train.momentum: unknown key; allowed: the training settings optimizer, lr",
    ),
    "validate-top-level-typo": Case(
        "validate",
        ["logs/params.ok"],
        set_in(["devise"], "cpu"),
        "devise: unknown key; allowed: datasets, determinism, device, experiments, launcher, paths, seed",
    ),
    "unknown-dataset-argument": Case(
        "normalize",
        ["digts"],
        lambda raw: None,
        "unknown dataset 'digts'; defined under datasets: digits, line",
    ),
    "unknown-experiment-argument": Case(
        "plot",
        ["nope"],
        lambda raw: None,
        "unknown experiment 'nope'; defined under experiments: digits_mlp, line_linear",
    ),
}


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every --help and every bad-params run at once; wait for all of them."""
    procs = {}
    for stage in STAGES:
        procs[f"help-{stage}"] = start([str(ROOT / "stages" / f"{stage}.py"), "--help"], ROOT)
    for name, case in CASES.items():
        root = tmp_path_factory.mktemp(name)
        raw = copy.deepcopy(tiny_params_dict())
        case.edit(raw)
        (root / "params.yaml").write_text(yaml.safe_dump(raw))
        if case.with_data:
            prepared = prepare.prepare(digit_table(), 0.2, 0, "global")
            store.save(prepared, root / raw["paths"]["processed"] / "digits")
        before = sorted(p.name for p in root.iterdir())
        script = str(ROOT / "stages" / f"{case.stage}.py")
        procs[name] = (start([script, *case.args, "--params", "params.yaml"], root), root, before)
    results = {}
    for name, proc in procs.items():
        if isinstance(proc, tuple):
            proc, root, before = proc
            out, err = proc.communicate(timeout=120)
            results[name] = (proc.returncode, out, err, root, before)
        else:
            out, err = proc.communicate(timeout=120)
            results[name] = (proc.returncode, out, err)
    return results


def test_every_stage_is_covered():
    assert {"download", "normalize", "train", "evaluate", "plot"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_help(runs, stage):
    code, out, err = runs[f"help-{stage}"]
    assert code == 0, err
    assert out.startswith("usage: ") and "--params" in out
    assert err == ""


@pytest.mark.parametrize("name", list(CASES))
def test_bad_params_give_one_error_line_and_no_output(runs, name):
    code, out, err, root, before = runs[name]
    case = CASES[name]
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and case.expected in lines[0]
    assert out == ""
    # Nothing written: the working directory holds what it held, and no output root was created.
    assert sorted(p.name for p in root.iterdir()) == before
    made = [r for r in OUTPUT_ROOTS if (root / r).exists()]
    assert made == (["processed"] if case.with_data else [])
    if case.with_data:
        assert [p.name for p in (root / "processed").iterdir()] == ["digits"]


def test_missing_params_file_is_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "download.py"), "x", "--params", "missing.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "error: missing.yaml: file not found; run from the project root or pass --params\n"
    assert list(tmp_path.iterdir()) == []


def test_missing_argument_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py")], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "the following arguments are required: experiment" in result.stderr
