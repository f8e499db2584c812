"""report: one row per experiment in params, its numbers exactly those of the stage outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from torchrepro import evaluate, report
from torchrepro.core.params import Paths, parse_params
from torchrepro.train import stage

from conftest import ROOT

REPORT_FILES = {"summary.csv", "summary.md", "headline.png"}


@pytest.fixture
def evaluated(tiny_params, params_dict):
    """The tiny params plus `spare`, defined but never trained; the other two trained and evaluated."""
    params_dict["experiments"]["spare"] = {"dataset": "line", "model": {"name": "linear"}}
    params = parse_params(params_dict)
    for name in ("digits_mlp", "line_linear"):
        stage.run(params, name, progress=False)
        evaluate.run(params, name)
    return params


def read(path) -> dict:
    return json.loads(path.read_text())


def test_one_row_per_experiment_with_the_numbers_of_its_files(evaluated, capsys):
    params, paths = evaluated, evaluated.paths
    report.run(params)
    assert "no metrics yet for spare" in capsys.readouterr().err
    assert {p.name for p in Path(paths.reports).iterdir()} == REPORT_FILES  # no temporary files left

    table = pd.read_csv(f"{paths.reports}/summary.csv", keep_default_na=False, na_values=[""])
    assert table["experiment"].tolist() == ["digits_mlp", "line_linear", "spare"]  # params.yaml's order
    rows = table.set_index("experiment")
    for name, headline in [("digits_mlp", "accuracy"), ("line_linear", "mse")]:
        row = rows.loc[name]
        other = "mse" if headline == "accuracy" else "accuracy"
        assert row[headline] == read(paths.evaluate_live_dir(name) / "metrics.json")[headline] and pd.isna(row[other])
        assert row["n_parameters"] == read(paths.model_dir(name) / "model.json")["n_parameters"]
        assert row["device"] == "cpu"  # the setting, as params give it
    assert rows.loc["spare"][["accuracy", "mse", "n_parameters"]].isna().all()

    digits = rows.loc["digits_mlp"]  # settings come from params: optimizer with its non-zero options
    assert (digits["dataset"], digits["model"], digits["optimizer"]) == ("digits", "mlp", "adam")
    assert (digits["lr"], digits["batch_size"], digits["epochs"]) == (0.01, 16, 2)
    assert digits["model_kwargs"] == "hidden_sizes=[16] activation=relu"


def test_the_report_holds_nothing_of_the_host_or_the_run_time(evaluated):
    """Wall-clock seconds and the machine stay in the train log: the report reads none of it,
    so retraining (other seconds) or another host gives the same bytes."""
    paths = evaluated.paths
    report.run(evaluated)
    first = {name: (Path(paths.reports) / name).read_bytes() for name in REPORT_FILES}
    for name in ("digits_mlp", "line_linear"):
        log = read(paths.log_file(name))
        assert log["train_seconds"] >= 0 and log["device_name"]  # still there, for people
        paths.log_file(name).write_text(json.dumps(log | {"train_seconds": 1e6, "device_name": "another host"}))
    report.run(evaluated)
    assert {name: (Path(paths.reports) / name).read_bytes() for name in REPORT_FILES} == first
    assert "train_seconds" not in report.COLUMNS


def test_markdown_and_chart(evaluated):
    report.run(evaluated)
    reports = evaluated.paths.reports
    lines = Path(f"{reports}/summary.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3  # header, alignment, one row per experiment
    assert table[0].split("|")[1].strip() == "experiment" and table[1].startswith("|:---|")
    assert table[2].startswith("| digits_mlp | digits | mlp |") and table[4].startswith("| spare |")
    with Image.open(f"{reports}/headline.png") as image:
        assert image.format == "PNG" and image.width > image.height


def test_chart_with_one_kind_or_none(tiny_params, tmp_path):
    """Only regressions, or nothing evaluated at all: one panel, still a valid PNG."""
    frame = report.summary(tiny_params)
    for name, rows in [("none.png", frame), ("mse.png", frame.assign(mse=[None, 1.5]))]:
        report.headline_chart(rows, tmp_path / name)
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"


def test_stage_script(evaluated, params_dict, tmp_path):
    """stages/report.py as dvc runs it, with --params."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages/report.py"), "--params", "params.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the project's folder: its paths lead there
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "reports").iterdir()} == REPORT_FILES


def test_dvc_stage_declares_what_report_writes():
    """dvc.yaml's report stage: outs and plots are the files report.run writes under
    paths.reports, and it depends on the directories the numbers come from."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    paths = Paths()
    resolve = lambda entry: next(iter(entry)) if isinstance(entry, dict) else entry  # noqa: E731
    declared = [resolve(e).replace("${paths.reports}", paths.reports) for e in stage["outs"] + stage["plots"]]
    assert sorted(declared) == sorted(f"{paths.reports}/{name}" for name in REPORT_FILES)
    assert {"${paths.metrics}", "${paths.models}", "src/torchrepro/report.py"} <= set(stage["deps"])
    assert not any(dep.startswith("${paths.logs}") for dep in stage["deps"])  # timings differ run to run
    assert stage["params"] == ["device", "experiments"]
