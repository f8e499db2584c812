"""Bad input at every entry point, from a table: broken params files, raw and processed data,
model and metrics files, and the files given to `python -m torchrepro.predict`.

Each case copies a small trained project, breaks one thing, runs one entry point as its command
line would (`stages/X.py` through runpy, predict and export through their main()), in this
process for speed, and asserts: exit status 2, exactly one `error:` line on stderr that names
what to fix, no exception escaping (a traceback), no Python warning, and every file of the
project byte for byte as it was, with none added. A few cases run again as real subprocesses
at the end. Odd but valid inputs (a byte order mark, blank rows, a 16-bit PNG) are in a second
table: they must give exactly the result of the plain input.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import io
import json
import os
import re
import runpy
import shutil
import struct
import subprocess
import sys
import traceback
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from ruamel.yaml import YAML

from torchrepro import download, evaluate, export, plot, predict, report, validate
from torchrepro.core.params import parse_params
from torchrepro.download.sources import Table
from torchrepro.models.checkpoint import signed
from torchrepro.normalize import prepare
from torchrepro.train import stage as train_stage

from conftest import ROOT, blob_csv_source, blob_table, digit_table

# --- The project every case starts from ------------------------------------------------------

ROOTS = ("raw", "processed", "models", "metrics", "predictions", "plots", "logs", "reports", "resume")


def base_params() -> dict:
    """Three datasets (digit images, a regression CSV, a classification CSV), one experiment
    each; every path relative, so a copy of the project is a project."""
    return {
        "device": "cpu",
        "seed": 0,
        "determinism": "portable",
        "launcher": "python",
        "paths": {name: name for name in ROOTS},
        "datasets": {
            "digits": {"source": {"name": "mnist-5k"}, "split": {"test_size": 0.2, "seed": 0}, "normalize": "global"},
            "line": {
                "source": {
                    "name": "csv",
                    "path": "data/csv/line.csv",
                    "features": ["x"],
                    "target": "y",
                    "task": "regression",
                },
                "split": "none",
                "normalize": "per_feature",
            },
            "blobs": {
                "source": blob_csv_source(),
                "split": {"test_size": 0.3, "seed": 0},
            },
        },
        "experiments": {
            "digits_mlp": {
                "dataset": "digits",
                "model": {"name": "mlp", "hidden_sizes": [16]},
                "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 2},
            },
            "line_linear": {
                "dataset": "line",
                "model": {"name": "linear"},
                "train": {"optimizer": "sgd", "lr": 0.1, "batch_size": 10, "epochs": 3},
            },
            "blobs_mlp": {
                "dataset": "blobs",
                "model": {"name": "mlp", "hidden_sizes": [8]},
                "train": {
                    "optimizer": "adam",
                    "lr": 0.01,
                    "batch_size": 16,
                    "epochs": 3,
                    "scheduler": {"name": "step", "step_size": 1, "gamma": 0.9},
                },
            },
        },
    }


def dump_params(raw: dict) -> str:
    """params.yaml's text for `raw`, written for a YAML 1.2 reader as DVC and the stages are:
    a string such as '1e-8' or '010' is quoted (PyYAML, a YAML 1.1 writer, leaves it bare, and
    it would read back as a number)."""
    writer = YAML(typ="safe")
    writer.default_flow_style = False
    writer.sort_base_mapping_type_on_output = False
    text = io.StringIO()
    writer.dump(raw, text)
    return text.getvalue()


def table_csv(table: Table) -> str:
    names = [*table.feature_names, table.target_name]
    rows = [
        [*(f"{v:.6g}" for v in x), table.classes[y] if table.classes else f"{y:.6g}"] for x, y in zip(table.x, table.y)
    ]
    return "\n".join(",".join(r) for r in [names, *rows]) + "\n"


def digit_png(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels.astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray((pixels.astype(np.uint16) * 257).astype(np.uint16))
    elif mode != "L":
        image = image.convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The project every case copies; nothing writes here."""
    return build_project(tmp_path_factory.mktemp("fuzz") / "project")


def build_project(root: Path) -> Path:
    """A project after the whole pipeline ran on it: raw, processed, models, metrics,
    predictions, plots, report and validate's marker, plus inputs for predict."""
    root.mkdir()
    raw = base_params()
    (root / "params.yaml").write_text(dump_params(raw))
    x = np.arange(10.0)
    line = Table(x=x[:, None], y=2 * x + 1, task="regression", feature_names=["x"], target_name="y")
    (root / "data" / "csv").mkdir(parents=True)
    (root / "data" / "csv" / "line.csv").write_text(table_csv(line))
    (root / "data" / "csv" / "blobs.csv").write_text(table_csv(blob_table()))
    digits = digit_table()
    (root / "inputs").mkdir()
    (root / "inputs" / "blobs.csv").write_text(table_csv(blob_table(n=6, seed=1)))
    (root / "inputs" / "digit.png").write_bytes(digit_png(digits.x[3]))
    with contextlib.chdir(root):
        params = parse_params(raw)
        validate.run(params, "logs/params.ok")
        (root / "raw" / "digits").mkdir(parents=True)  # what mnist-5k's fetch leaves, with 60 digits
        np.save(root / "raw" / "digits" / "images.npy", digits.x)
        np.save(root / "raw" / "digits" / "labels.npy", digits.y)
        for name in ("line", "blobs"):
            download.run(params, name)
        for name in params.datasets:
            prepare.run(params, name)
        for name in params.experiments:
            train_stage.run(params, name, progress=False)
            evaluate.run(params, name)
            plot.run(params, name)
        report.run(params)
    # Resume checkpoints are tidied by every training run (those of other params are removed):
    # a cache, not an output; the resume cases below make their own.
    shutil.rmtree(root / "resume")
    return root


# --- Running an entry point in this process --------------------------------------------------

# A tqdm progress bar of the train stage: the one kind of line besides `error:` a failed run may print.
PROGRESS = re.compile(r"^epoch \d+/\d+: ")


@dataclass
class Outcome:
    code: int | str | None
    out: str
    err: str
    escaped: str | None  # the traceback of an exception that escaped the entry point
    warned: list[str]


def run_entry(argv: list[str], cwd: Path) -> Outcome:
    """Run `python stages/X.py ARGS`, `python -m torchrepro.predict ARGS` or `... export ARGS`
    as the command line would, in this process; SystemExit gives the exit status."""
    err, out = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    saved_argv, saved_env = sys.argv, dict(os.environ)
    with warnings.catch_warnings(record=True) as warned, contextlib.chdir(cwd):
        warnings.simplefilter("always")
        # Python's default filters hide ResourceWarning from users; here it would also catch
        # the garbage of earlier cases (dulwich's ObjectStore warns when it is collected).
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                if argv[0] == "-m":
                    module = {"torchrepro.predict": predict, "torchrepro.export": export}[argv[1]]
                    module.main(argv[2:])
                else:
                    sys.argv = [str(ROOT / argv[0]), *argv[1:]]
                    runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        except BaseException:  # noqa: B036 - anything else escaping is the traceback a user would see
            code, escaped = "escaped", traceback.format_exc()
        finally:
            sys.argv = saved_argv
            os.environ.clear()
            os.environ.update(saved_env)  # the stages set determinism variables
    return Outcome(code, out.getvalue(), err.getvalue(), escaped, [str(w.message) for w in warned])


def assert_one_error(outcome, says: str) -> None:
    """Exit status 2, one `error:` line saying `says`, nothing else: no traceback, no warning."""
    assert outcome.escaped is None, outcome.escaped
    assert outcome.code == 2, (outcome.code, outcome.err)
    assert outcome.err.startswith("error: ") and outcome.err.count("\n") == 1, outcome.err
    assert says in outcome.err, outcome.err
    assert outcome.out == "" and outcome.warned == []


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root, as relative path -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --- How cases break the project ------------------------------------------------------------

Break = Callable[[Path], None]


def params_edit(edit: Callable[[dict], None]) -> Break:
    def apply(root: Path) -> None:
        raw = YAML(typ="safe").load((root / "params.yaml").read_text())
        edit(raw)
        (root / "params.yaml").write_text(dump_params(raw))

    return apply


def setting(dotted: str, value) -> Break:
    """Set one params key (dotted path; missing parents are created)."""

    def edit(raw: dict) -> None:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)

    return params_edit(edit)


def rename(section: str, old: str, new: str) -> Break:
    def edit(raw: dict) -> None:
        raw[section] = {new if k == old else k: v for k, v in raw[section].items()}
        for exp in raw["experiments"].values():
            if section == "datasets" and exp["dataset"] == old:
                exp["dataset"] = new

    return params_edit(edit)


def write(rel: str, content: bytes | str) -> Break:
    def apply(root: Path) -> None:
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return apply


def remove(rel: str) -> Break:
    def apply(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return apply


def make_dir(rel: str) -> Break:
    def apply(root: Path) -> None:
        path = root / rel
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir(parents=True)

    return apply


def link(rel: str, target: str) -> Break:
    """A symbolic link at `rel` to `target` (relative to the link's folder), which is made too."""

    def apply(root: Path) -> None:
        (root / rel).parent.joinpath(target).parent.mkdir(parents=True, exist_ok=True)
        if not target.endswith(".csv"):
            (root / rel).parent.joinpath(target).mkdir(exist_ok=True)
        else:
            (root / rel).parent.joinpath(target).write_text("x,y\n1,2\n")
        (root / rel).symlink_to(target)

    return apply


def params_text(transform: Callable[[str], str | bytes]) -> Break:
    def apply(root: Path) -> None:
        text = transform((root / "params.yaml").read_text())
        (root / "params.yaml").write_bytes(text.encode() if isinstance(text, str) else text)

    return apply


def edit_json(rel: str, edit: Callable[[dict], object]) -> Break:
    def apply(root: Path) -> None:
        path = root / rel
        content = json.loads(path.read_text())
        edit(content)
        path.write_text(json.dumps(content))

    return apply


def pop(key: str) -> Callable[[dict], object]:
    return lambda d: d.pop(key)


def put(key: str, value) -> Callable[[dict], object]:
    return lambda d: d.__setitem__(key, copy.deepcopy(value))


def put_in(outer: str, key: str, value) -> Callable[[dict], object]:
    return lambda d: d[outer].__setitem__(key, copy.deepcopy(value))


def edit_npy(dataset: str, split: str, edit: Callable[[dict], dict]) -> Break:
    """Rewrite a processed split's arrays ({"x": ..., "y": ...}) and record their new digests in
    meta.json, as a writer with a bug (or an attacker) could: the digests pass, the content
    must still be checked."""

    def apply(root: Path) -> None:
        folder = root / "processed" / dataset
        arrays = {name: np.load(folder / f"{name}_{split}.npy") for name in ("x", "y")}
        meta = json.loads((folder / "meta.json").read_text())
        for name, array in edit(arrays).items():
            path = folder / f"{name}_{split}.npy"
            np.save(path, array, allow_pickle=True)
            meta["sha256"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        (folder / "meta.json").write_text(json.dumps(meta))

    return apply


def edit_model_json(experiment: str, edit: Callable[[dict], object]) -> Break:
    """An edited model.json, signed again: the damage a digest cannot see must be caught too."""

    def signed_edit(info: dict) -> None:
        edit(info)
        info.pop("json_sha256", None)
        info.update(signed(info))

    return edit_json(f"models/{experiment}/model.json", signed_edit)


def replace_weights(experiment: str, state: Callable[[dict], object]) -> Break:
    """A new model.pt with its digest recorded in model.json."""

    def apply(root: Path) -> None:
        folder = root / "models" / experiment
        weights = torch.load(folder / "model.pt", weights_only=True)
        buffer = io.BytesIO()
        torch.save(state(weights), buffer)
        (folder / "model.pt").write_bytes(buffer.getvalue())
        info = json.loads((folder / "model.json").read_text())
        info["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        info.pop("json_sha256", None)
        (folder / "model.json").write_text(json.dumps(signed(info)))

    return apply


def flip_byte(rel: str, at: int = -100) -> Break:
    def apply(root: Path) -> None:
        data = bytearray((root / rel).read_bytes())
        data[at] ^= 0xFF
        (root / rel).write_bytes(bytes(data))

    return apply


def truncate(rel: str, keep: int) -> Break:
    def apply(root: Path) -> None:
        path = root / rel
        path.write_bytes(path.read_bytes()[:keep])

    return apply


def both(*breaks: Break) -> Break:
    def apply(root: Path) -> None:
        for b in breaks:
            b(root)

    return apply


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height (with valid CRCs) and whose pixels are absent:
    what a decompression bomb's first bytes look like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Payload:
    """Unpickled without weights_only, this would run `open(...)`: a checkpoint must be refused."""

    def __reduce__(self):
        return open, ("payload-ran", "w")


def other_format(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


# --- The table -------------------------------------------------------------------------------


@dataclass
class Case:
    argv: list[str]
    breaks: Break
    says: str  # what the one error line must contain
    usage: bool = False  # an argparse usage error: `usage: ...` lines, then `prog: error: ...`
    progress: bool = False  # a training run that fails mid-way: its progress bars may precede the error
    subprocess: bool = False  # also run as a real process


VALIDATE = ["stages/validate.py", "logs/params.ok"]
TRAIN = ["stages/train.py", "blobs_mlp"]
TRAIN_LINE = ["stages/train.py", "line_linear"]
EVALUATE = ["stages/evaluate.py", "blobs_mlp"]
PREDICT = ["-m", "torchrepro.predict", "--experiment", "blobs_mlp"]
PREDICT_DIGITS = ["-m", "torchrepro.predict", "--experiment", "digits_mlp"]
# Every entry point that reads params.yaml.
ENTRY_POINTS = {
    "validate": VALIDATE,
    "download": ["stages/download.py", "line"],
    "normalize": ["stages/normalize.py", "line"],
    "train": TRAIN_LINE,
    "evaluate": EVALUATE,
    "plot": ["stages/plot.py", "blobs_mlp"],
    "report": ["stages/report.py"],
    "predict": [*PREDICT, "inputs/blobs.csv"],
    "export": ["-m", "torchrepro.export", "--experiment", "line_linear", "--out", "line.pt2"],
}

CASES: dict[str, Case] = {}


def case(name: str, argv: list[str], breaks: Break, says: str, **options) -> None:
    assert name not in CASES, name
    CASES[name] = Case(argv, breaks, says, **options)


# A broken params file, at every entry point: each reads it through the same loader, and each
# must say so in one line before it does anything else.
FILE_LEVEL = {
    "empty": (write("params.yaml", ""), "params.yaml: expected a mapping at the top level, got NoneType"),
    "binary": (write("params.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), "params.yaml: cannot read"),
    "a-list": (write("params.yaml", "- device: cpu\n"), "params.yaml: expected a mapping at the top level, got list"),
    "unclosed-flow": (params_text(lambda t: t + "extra: {a: 1\n"), "params.yaml: not valid YAML at line"),
    "duplicate-key": (params_text(lambda t: t + "seed: 1\n"), "duplicate key 'seed'"),
    "unknown-top-level-key": (params_text(lambda t: t + "devise: cpu\n"), "devise: unknown key; allowed: datasets"),
    "tab-indent": (params_text(lambda t: t.replace("\n  ", "\n\t", 1)), "params.yaml: not valid YAML at line"),
    "python-tag": (
        params_text(lambda t: t + "x: !!python/object/apply:os.system ['true']\n"),
        "could not determine a constructor for the tag",
    ),
    "nested-too-deeply": (params_text(lambda t: t + "x: " + "[" * 1000 + "]" * 1000 + "\n"), "nested too deeply"),
    "alias-bomb": (  # nine levels of nine aliases: 387 million leaves if each alias were expanded
        params_text(
            lambda t: (
                "bomb0: &b0 [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]\n"
                + "".join(f"bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" for i in range(1, 10))
                + t.replace("    train:\n", "    train:\n      betas: *b9\n", 1)  # expanded by validate
            )
        ),
        "its aliases would expand to more than 100,000 values",
    ),
    "alias-loop": (params_text(lambda t: t + "loop: &loop [*loop]\n"), "an alias repeats a node that holds it"),
    "a-fifo": (lambda root: (remove("params.yaml")(root), os.mkfifo(root / "params.yaml")), "is a named pipe (FIFO)"),
    "lr-infinite": (setting("experiments.line_linear.train.lr", float("inf")), "train.lr: must be a finite number"),
    "is-a-folder": (make_dir("params.yaml"), "params.yaml: "),
    "not-utf8": (
        params_text(lambda t: t.replace("cpu", "cpu # caf\xe9").encode("latin-1")),
        "params.yaml: cannot read",
    ),
}
for entry, argv in ENTRY_POINTS.items():
    for problem, (breaks, says) in FILE_LEVEL.items():
        if problem == "nested-too-deeply" and entry not in ("validate", "predict"):
            continue  # half a second each, in PyYAML; the loader is the same everywhere
        case(f"params-{problem}@{entry}", argv, breaks, says, subprocess=(entry, problem) == ("train", "duplicate-key"))
    case(
        f"params-missing@{entry}",
        [*argv, "--params", "missing.yaml"],
        lambda root: None,
        "missing.yaml: file not found",
    )

# One wrong value: validate (the head of the DAG) names its key.
VALUES = {
    "seed-string": ("seed", "0", "seed: Input should be a valid integer (got '0')"),
    "seed-negative": ("seed", -1, "seed: Input should be greater than or equal to 0"),
    "seed-64-bit": ("seed", 2**40, "seed: Input should be less than 4294967296"),
    "seed-float": ("seed", 1.5, "seed: Input should be a valid integer"),
    "seed-bool": ("seed", True, "seed: Input should be a valid integer"),
    "device-int": ("device", 0, "device: Input should be a valid string"),
    "device-unknown": ("device", "gpu", "device: unknown device 'gpu'; allowed: auto, cpu"),
    "device-absent-cuda": ("device", "cuda:99", "device: 'cuda:99' requested but"),
    "determinism": ("determinism", "strict", "determinism: Input should be 'portable' or 'host'"),
    "launcher-empty": ("launcher", "", "launcher: must be a command and its arguments"),
    "launcher-shell": ("launcher", "touch pwned; python", "no shell syntax (; | & $ ` < > quotes) (got 'touch pwned;"),
    "launcher-substitution": ("launcher", "python $(touch pwned)", "launcher: must be a command and its arguments"),
    "launcher-quotes": ("launcher", "python 'x'", "launcher: must be a command and its arguments"),
    "launcher-newline": ("launcher", "python\ntouch pwned", "launcher: must be a command and its arguments"),
    "paths-list": ("paths", ["models"], "paths: Input should be a valid dictionary"),
    "paths-int": ("paths.models", 3, "paths.models: Input should be a valid string"),
    "paths-empty": ("paths.models", "", "paths.models: '' must name a folder of its own"),
    "paths-dot": ("paths.raw", ".", "paths.raw: '.' must name a folder of its own"),
    "paths-dotdot": ("paths.processed", "../elsewhere", "paths.processed: '../elsewhere' must name a folder"),
    "paths-same": ("paths.processed", "raw", "lies in paths."),
    "paths-nested": ("paths.resume", "models/resume", "paths.resume: 'models/resume' lies in paths.models"),
    "paths-absolute": ("paths.models", "/tmp/models", "paths.models: '/tmp/models' is absolute"),
    "paths-into-the-library": ("paths.models", "src/torchrepro", "paths.models: 'src/torchrepro' lies in src/"),
    "paths-into-stages": ("paths.plots", "stages", "paths.plots: 'stages' lies in stages/ (the stage scripts)"),
    "paths-into-tests": ("paths.reports", "tests/out", "paths.reports: 'tests/out' lies in tests/"),
    "paths-into-git": ("paths.logs", ".git/logs", "paths.logs: '.git/logs' lies in .git/"),
    "paths-into-dvc": ("paths.resume", ".dvc/tmp", "paths.resume: '.dvc/tmp' lies in .dvc/"),
    "paths-into-csv-sources": ("paths.predictions", "data/csv", "paths.predictions: 'data/csv' lies in data/csv/"),
    "paths-holding-csv-sources": ("paths.models", "data", "paths.models: 'data' holds data/csv/ (the CSV sources)"),
    "csv-absolute": ("datasets.line.source.path", "/tmp/line.csv", "source.path: not in data/csv, so DVC would"),
    "csv-outside-data-csv": ("datasets.line.source.path", "line.csv", "copy the file into data/csv/"),
    "csv-climbing-out": ("datasets.line.source.path", "data/csv/../../line.csv", "source.path: not in data/csv"),
    "datasets-list": ("datasets", ["line"], "datasets: Input should be a valid dictionary"),
    "datasets-null": ("datasets", None, "datasets: Input should be a valid dictionary"),
    "experiments-string": ("experiments", "all", "experiments: Input should be a valid dictionary"),
    "split-word": ("datasets.blobs.split", "all", "datasets.blobs.split: Input should be 'none'"),
    "test-size-1": ("datasets.blobs.split.test_size", 1.0, "split.test_size: Input should be less than 1"),
    "test-size-0": ("datasets.blobs.split.test_size", 0, "split.test_size: Input should be greater than 0"),
    "normalize-unknown": ("datasets.blobs.normalize", "minmax", "datasets.blobs.normalize: Input should be 'none'"),
    "source-int": ("datasets.blobs.source", 5, "datasets.blobs.source: Input should be a valid dictionary"),
    "source-unknown": ("datasets.blobs.source", "blobz", "source.name: unknown source 'blobz'; allowed: csv"),
    "csv-no-features": ("datasets.blobs.source.features", [], "source.features: List should have at least 1 item"),
    "csv-features-string": ("datasets.blobs.source.features", "f0", "source.features: Input should be a valid list"),
    "csv-feature-twice": ("datasets.blobs.source.features", ["f0", "f0"], "features: 'f0' is listed twice"),
    "csv-target-is-feature": ("datasets.blobs.source.target", "f0", "target: 'f0' is also listed under features"),
    "csv-task": ("datasets.blobs.source.task", "ranking", "source.task: Input should be 'classification'"),
    "csv-option": ("datasets.blobs.source.sep", ";", "source.sep: unknown option for source 'csv'"),
    "mnist-mirror": ("datasets.digits.source", {"name": "mnist", "mirrors": ["notaurl"]}, "mirrors.0: String should"),
    "mnist-timeout": (
        "datasets.digits.source",
        {"name": "mnist", "timeout_s": 0},
        "timeout_s: Input should be greater",
    ),
    "mnist-retries": ("datasets.digits.source", {"name": "mnist", "retries": 10**6}, "retries: Input should be less"),
    "experiment-dataset": ("experiments.blobs_mlp.dataset", "blob", "unknown dataset 'blob'; defined under datasets"),
    "model-string": ("experiments.blobs_mlp.model", "mlp", "model: Input should be a valid dictionary"),
    "model-no-name": ("experiments.blobs_mlp.model", {"hidden_sizes": [8]}, "model.name: Field required"),
    "model-unknown": ("experiments.blobs_mlp.model.name", "resnet", "model.name: unknown model 'resnet'; allowed: cnn"),
    "mlp-width-0": ("experiments.blobs_mlp.model.hidden_sizes", [0], "hidden_sizes.0: Input should be greater"),
    "mlp-no-layers": ("experiments.blobs_mlp.model.hidden_sizes", [], "hidden_sizes: List should have at least 1"),
    "mlp-width-string": (
        "experiments.blobs_mlp.model.hidden_sizes",
        "16",
        "hidden_sizes: Input should be a valid list",
    ),
    "mlp-width-huge": ("experiments.blobs_mlp.model.hidden_sizes", [2**17], "hidden_sizes.0: Input should be less"),
    "mlp-activation": ("experiments.blobs_mlp.model.activation", "gelu", "activation: Input should be 'relu'"),
    "cnn-dropout": ("experiments.blobs_mlp.model", {"name": "cnn", "dropout1": 1.5}, "dropout1: Input should be less"),
    "linear-bias": ("experiments.line_linear.model.bias", "yes", "model.bias: Input should be a valid boolean"),
    "model-option": ("experiments.blobs_mlp.model.width", 8, "model.width: unknown option for model 'mlp'"),
    "lr-nan": ("experiments.blobs_mlp.train.lr", float("nan"), "train.lr: must be a finite number"),
    "lr-negative": ("experiments.blobs_mlp.train.lr", -0.1, "train.lr: Input should be greater than 0"),
    "lr-overflows-float32": ("experiments.blobs_mlp.train.lr", 1e300, "train.lr: 1e+300 is out of float32's range"),
    "eps-overflows-float32": ("experiments.blobs_mlp.train.eps", 1e300, "train.eps: 1e+300 is out of float32's range"),
    "lr-string": ("experiments.blobs_mlp.train.lr", "0.1", "train.lr: Input should be a valid number"),
    "batch-0": ("experiments.blobs_mlp.train.batch_size", 0, "train.batch_size: Input should be greater"),
    "batch-huge": ("experiments.blobs_mlp.train.batch_size", 2**40, "train.batch_size: Input should be less"),
    "epochs-0": ("experiments.blobs_mlp.train.epochs", 0, "train.epochs: Input should be greater than or equal to 1"),
    "epochs-huge": ("experiments.blobs_mlp.train.epochs", 10**9, "train.epochs: Input should be less"),
    "train-list": ("experiments.blobs_mlp.train", [1], "train: Input should be a valid dictionary"),
    "optimizer-unknown": ("experiments.blobs_mlp.train.optimizer", "adamm", "unknown optimizer 'adamm'; allowed"),
    "optimizer-int": ("experiments.blobs_mlp.train.optimizer", 1, "train.optimizer: Input should be a valid string"),
    "optimizer-lbfgs": ("experiments.blobs_mlp.train.optimizer", "lbfgs", "lbfgs needs a closure"),
    "adam-momentum": ("experiments.blobs_mlp.train.momentum", 0.9, "train.momentum: unknown key; allowed"),
    "adam-betas-short": ("experiments.blobs_mlp.train.betas", [0.9], "train.betas.1: Field required"),
    "adam-betas-map": ("experiments.blobs_mlp.train.betas", {"a": 1}, "train.betas: Input should be a valid array"),
    "adam-betas-range": ("experiments.blobs_mlp.train.betas", [0.9, 1.5], "Invalid beta parameter"),
    "adam-betas-date": (  # YAML reads 2020-01-01 as a date
        "experiments.blobs_mlp.train.betas",
        [0.9, datetime.date(2020, 1, 1)],
        "train.betas: [0.9, datetime.date(2020, 1, 1)] is not a number, string, boolean or list for optimizer Adam",
    ),
    "adam-eps-date": ("experiments.blobs_mlp.train.eps", datetime.date(2020, 1, 1), "train.eps: datetime.date(2020"),
    "step-size-date": (
        "experiments.blobs_mlp.train.scheduler",
        {"name": "step", "step_size": datetime.date(2020, 1, 1)},
        "scheduler.step_size: datetime.date(2020, 1, 1) is not a number, string, boolean or list for scheduler StepLR",
    ),
    "adam-amsgrad-int": ("experiments.blobs_mlp.train.amsgrad", 2, "train.amsgrad: Input should be a valid boolean"),
    "adam-foreach-word": (
        "experiments.blobs_mlp.train.foreach",
        "yes",
        "train.foreach: Input should be a valid boolean",
    ),
    "adam-eps-string": ("experiments.blobs_mlp.train.eps", "1e-8", "train.eps: Input should be a valid number"),
    "adam-eps-huge": ("experiments.blobs_mlp.train.eps", 10**400, "train.eps: Input should be a finite number"),
    "adam-differentiable": ("experiments.blobs_mlp.train.differentiable", True, "Adam cannot take a step"),
    "sgd-momentum-negative": ("experiments.line_linear.train.momentum", -1, "Invalid momentum value"),
    "sgd-nesterov": ("experiments.line_linear.train.nesterov", True, "Nesterov momentum requires a momentum"),
    "scheduler-string": ("experiments.blobs_mlp.train.scheduler", "step", "scheduler: Input should be a valid dict"),
    "scheduler-unknown": ("experiments.blobs_mlp.train.scheduler.name", "stepp", "unknown scheduler 'stepp'"),
    "scheduler-lambda": ("experiments.blobs_mlp.train.scheduler", {"name": "lambda"}, "lambda takes a Python function"),
    "step-size-0": ("experiments.blobs_mlp.train.scheduler.step_size", 0, "StepLR fails at step 1"),
    "step-size-word": ("experiments.blobs_mlp.train.scheduler.step_size", "a", "step_size: Input should be a valid"),
    "step-option": ("experiments.blobs_mlp.train.scheduler.steps", 1, "scheduler.steps: unknown key; allowed"),
    "gamma-negative": ("experiments.blobs_mlp.train.scheduler.gamma", -5.0, "makes the learning rate -0.05 at step 1"),
    "milestones-word": (
        "experiments.blobs_mlp.train.scheduler",
        {"name": "multistep", "milestones": "x"},
        "milestones: Input should be a valid",
    ),
    "plateau-mode": ("experiments.blobs_mlp.train.scheduler", {"name": "plateau", "mode": "up"}, "mode: Input should"),
    "warm-restarts-0": (
        "experiments.blobs_mlp.train.scheduler",
        {"name": "cosineannealingwarmrestarts", "T_0": 0},
        "Expected positive integer T_0",
    ),
    "experiment-device": ("experiments.blobs_mlp.device", "gpu", "experiments.blobs_mlp.device: unknown device"),
    "experiment-seed": ("experiments.blobs_mlp.seed", -3, "experiments.blobs_mlp.seed: Input should be greater"),
}
for problem, (key, value, says) in VALUES.items():
    case(f"value-{problem}", VALIDATE, setting(key, value), says, subprocess=problem == "gamma-negative")

# Paths that read as harmless but lead elsewhere on disk, and values a stage would act on before
# validate runs (train deletes folders under paths.models and paths.resume): each stage refuses them.
OUTSIDE = "../outside"  # a folder beside the project, from the project's folder
PATHS_ON_DISK = {
    "paths-link-outside": (
        TRAIN_LINE,
        both(link("models-link", OUTSIDE), setting("paths.models", "models-link")),
        "paths.models: 'models-link' leads to ",
    ),
    "paths-link-into-csv-sources": (
        VALIDATE,
        both(link("sneaky", "data/csv"), setting("paths.predictions", "sneaky")),
        "paths.predictions: 'sneaky' leads into data/csv/ (the CSV sources) through a link",
    ),
    "paths-resume-absolute": (TRAIN_LINE, setting("paths.resume", "/tmp/resume"), "paths.resume: '/tmp/resume' is"),
    "paths-models-into-the-library": (TRAIN_LINE, setting("paths.models", "src/torchrepro"), "lies in src/"),
    "launcher-shell": (TRAIN_LINE, setting("launcher", "touch pwned; python"), "launcher: must be a command"),
    "csv-absolute": (
        ["stages/download.py", "line"],
        setting("datasets.line.source.path", "/tmp/x.csv"),
        "not in data/csv",
    ),
    "csv-link-outside": (
        ["stages/download.py", "line"],
        both(
            link("data/csv/link.csv", "../../../outside.csv"), setting("datasets.line.source.path", "data/csv/link.csv")
        ),
        "source.path: leads out of data/csv to ",
    ),
}
for problem, (argv, breaks, says) in PATHS_ON_DISK.items():
    case(f"disk-{problem}", argv, breaks, says, subprocess=problem == "launcher-shell")

# Names that would become paths outside their folder, or stage names DVC refuses.
for bad in ("../evil", "a/b", "x y", ".hidden", "-dash"):
    case(f"name-experiment-{bad}", VALIDATE, rename("experiments", "line_linear", bad), "not a usable name")
    case(f"name-dataset-{bad}", VALIDATE, rename("datasets", "line", bad), "not a usable name")

# Values the schema cannot judge without the data: the train stage refuses them before training.
case(
    "train-model-too-big",
    TRAIN,
    setting("experiments.blobs_mlp.model.hidden_sizes", [65536, 65536, 65536]),
    "parameters; at most 1,073,741,824 are allowed",
)
case(
    "train-cnn-on-a-table",
    TRAIN,
    setting("experiments.blobs_mlp.model", {"name": "cnn"}),
    "cnn expects images (channels x height x width)",
)
case(
    "train-onecycle-too-short",
    TRAIN,
    setting("experiments.blobs_mlp.train.scheduler", {"name": "onecycle", "total_steps": 2}),
    "OneCycleLR fails at step 3: Tried to step 3 times",
)
case(
    "train-lr-that-diverges",
    TRAIN_LINE,
    setting("experiments.line_linear.train.lr", 1e30),
    "training diverged at epoch 1",
    progress=True,
)
for stage_argv, kind in ((["stages/download.py"], "dataset"), (["stages/train.py"], "experiment")):
    case(f"argument-unknown-{kind}", [*stage_argv, "nope"], lambda root: None, f"unknown {kind} 'nope'; defined under")
    case(f"argument-missing-{kind}", stage_argv, lambda root: None, f"required: {kind}", usage=True)

# --- Raw data (the normalize stage) ----------------------------------------------------------
NORMALIZE_DIGITS = ["stages/normalize.py", "digits"]
NORMALIZE_LINE = ["stages/normalize.py", "line"]
NORMALIZE_BLOBS = ["stages/normalize.py", "blobs"]
images = np.zeros((20, 28, 28), np.uint8)
RAW = {
    "npy-truncated": (NORMALIZE_DIGITS, truncate("raw/digits/images.npy", 300), "images.npy: corrupt or truncated"),
    "npy-float": (
        NORMALIZE_DIGITS,
        write("raw/digits/images.npy", npy(images.astype(np.float32))),
        "expected 3-d uint8",
    ),
    "npy-2d": (NORMALIZE_DIGITS, write("raw/digits/images.npy", npy(images[:, 0])), "expected 3-d uint8, found 2-d"),
    "npy-3x3": (
        NORMALIZE_DIGITS,
        both(
            write("raw/digits/images.npy", npy(images[:, :3, :3])), write("raw/digits/labels.npy", npy(np.arange(20)))
        ),
        "images are 3x3, expected 28x28",
    ),
    "npy-no-images": (
        NORMALIZE_DIGITS,
        both(write("raw/digits/images.npy", npy(images[:0])), write("raw/digits/labels.npy", npy(np.arange(0)))),
        "no images",
    ),
    "npy-label-11": (
        NORMALIZE_DIGITS,
        both(write("raw/digits/images.npy", npy(images)), write("raw/digits/labels.npy", npy(np.arange(20) % 12))),
        "labels must be 0-9, found 0..11",
    ),
    "npy-counts-differ": (
        NORMALIZE_DIGITS,
        write("raw/digits/labels.npy", npy(np.arange(7))),
        "60 images but 7 labels",
    ),
    "npy-missing": (NORMALIZE_DIGITS, remove("raw/digits/labels.npy"), "labels.npy: not found; run the download"),
    "npy-pickled": (
        NORMALIZE_DIGITS,
        write("raw/digits/images.npy", npy(np.array([{"a": 1}], dtype=object))),
        "images.npy: corrupt or truncated .npy file (Object arrays cannot be loaded",
    ),
    "raw-folder-missing": (NORMALIZE_LINE, remove("raw/line"), "raw/line/data.csv: CSV file not found"),
    "csv-extra-field": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\n2,5,9\n3,7\n"), "row 3 has 3 fields"),
    "csv-short-row": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\n2\n3,7\n"), "row 3 has 1 fields"),
    "csv-trailing-comma": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3,\n"), "row 2 has 3 fields"),
    "csv-duplicate-column": (
        NORMALIZE_LINE,
        write("raw/line/data.csv", "x,y,x\n1,3,1\n"),
        "names column 'x' twice (columns 1 and 3)",
    ),
    "csv-empty": (NORMALIZE_LINE, write("raw/line/data.csv", ""), "empty, with no header row"),
    "csv-header-only": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n"), "data.csv: no data rows"),
    "csv-binary": (NORMALIZE_LINE, write("raw/line/data.csv", b"\x89PNG\r\n\x1a\n\x00"), "not UTF-8 text (byte 0)"),
    "csv-utf16": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,2\n".encode("utf-16")), "not UTF-8 text"),
    "csv-nan": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\nnan,5\n"), "row 3, column 'x': 'nan' is not a"),
    "csv-overflow": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\n1e400,5\n"), "'1e400' is not a finite"),
    "csv-word": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\n2,five\n"), "row 3, column 'y': not a number"),
    "csv-empty-cell": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\n ,5\n"), "row 3, column 'x': empty cell"),
    "csv-open-quote": (NORMALIZE_LINE, write("raw/line/data.csv", 'x,y\n"1,3\n2,5\n'), "unexpected end of data"),
    "csv-nul": (NORMALIZE_LINE, write("raw/line/data.csv", "x,y\n1,3\x00\n"), "row 2"),
    "csv-no-target": (NORMALIZE_LINE, write("raw/line/data.csv", "x,z\n1,3\n"), "missing column(s) y"),
    "csv-a-folder": (NORMALIZE_LINE, make_dir("raw/line/data.csv"), "data.csv: is a folder, not a CSV file"),
    "csv-blank-label": (
        NORMALIZE_BLOBS,
        write("raw/blobs/data.csv", "f0,f1,f2,f3,kind\n1,2,3,4,a\n1,2,3,4,\n"),
        "row 3, column 'kind': empty cell",
    ),
    "csv-too-few-rows": (
        NORMALIZE_BLOBS,
        write("raw/blobs/data.csv", "f0,f1,f2,f3,kind\n1,2,3,4,a\n5,6,7,8,b\n"),
        "too few",
    ),
    "csv-one-class": (
        NORMALIZE_BLOBS,
        write("raw/blobs/data.csv", "f0,f1,f2,f3,kind\n" + "".join(f"{i},2,3,4,a\n" for i in range(12))),
        "target 'kind' has one class ('a')",
    ),
    "source-csv-ragged": (
        ["stages/download.py", "line"],
        write("data/csv/line.csv", "x,y\n1,3\n2,5,7\n"),
        "row 3 has 3",
    ),
    "source-csv-missing": (["stages/download.py", "line"], remove("data/csv/line.csv"), "line.csv: CSV file not found"),
    "source-csv-folder": (["stages/download.py", "blobs"], make_dir("data/csv/blobs.csv"), "blobs.csv: is a folder"),
}
for problem, (argv, breaks, says) in RAW.items():
    case(f"raw-{problem}", argv, breaks, says, subprocess=problem == "csv-extra-field")

# --- Processed data (train, evaluate, plot read it) ------------------------------------------
META = "processed/blobs/meta.json"
PROCESSED = {
    "meta-missing": (remove(META), "meta.json: not found; run the normalize stage first"),
    "meta-empty": (write(META, ""), "meta.json: not valid JSON"),
    "meta-binary": (write(META, b"\xff\xfe\x00"), "meta.json: not valid JSON"),
    "meta-a-list": (write(META, "[1]"), "not a processed-data description (no sha256 digests)"),
    "meta-a-folder": (make_dir(META), "meta.json: is a folder, not a JSON file"),
    "meta-huge-number": (write(META, '{"sha256": {}, "n": ' + "9" * 5000 + "}"), "meta.json: not valid JSON"),
    "meta-no-task": (edit_json(META, pop("task")), "meta.json: task: Field required"),
    "meta-task": (edit_json(META, put("task", "ranking")), "meta.json: task: Input should be 'classification'"),
    "meta-no-classes": (edit_json(META, pop("classes")), "meta.json: classes: Field required"),
    "meta-classes-string": (edit_json(META, put("classes", "abc")), "meta.json: classes: Input should be a valid list"),
    "meta-classes-twice": (edit_json(META, put("classes", ["a", "a", "b"])), "needs distinct class names"),
    "meta-shape": (edit_json(META, put("input_shape", [5])), "feature_names: 4 names for 5 features"),
    "meta-shape-string": (edit_json(META, put("input_shape", "4")), "input_shape: Input should be a valid list"),
    "meta-shape-zero": (edit_json(META, put("input_shape", [0])), "input_shape.0: Input should be greater"),
    "meta-no-normalize": (edit_json(META, pop("normalize")), "meta.json: normalize: Field required"),
    "meta-std-zero": (edit_json(META, put_in("normalize", "std", [1, 0, 1, 1])), "normalize.std: must be finite and"),
    "meta-mean-nan": (edit_json(META, put_in("normalize", "mean", float("nan"))), "normalize.mean: must be finite"),
    "meta-mean-shape": (edit_json(META, put_in("normalize", "mean", [1, 2])), "normalize.mean: not numbers of the"),
    "meta-scale": (edit_json(META, put_in("normalize", "scale", -1)), "normalize.scale: Input should be greater"),
    "meta-n-train": (edit_json(META, put("n_train", 0)), "n_train: Input should be greater than or equal to 1"),
    "npy-missing": (remove("processed/blobs/x_train.npy"), "x_train.npy: not found; run the normalize stage first"),
    "npy-a-folder": (make_dir("processed/blobs/y_train.npy"), "y_train.npy: is a folder"),
    "npy-flipped-byte": (flip_byte("processed/blobs/x_train.npy"), "x_train.npy: its SHA-256 does not match meta.json"),
    "npy-truncated": (truncate("processed/blobs/x_train.npy", 100), "x_train.npy: its SHA-256 does not match"),
    "npy-nan": (edit_npy("blobs", "train", lambda z: {"x": z["x"] * np.nan}), "x_train.npy: x holds NaN or infinity"),
    "npy-inf-one": (
        edit_npy(
            "blobs",
            "train",
            lambda z: {
                "x": np.where(np.arange(z["x"].size).reshape(z["x"].shape) == 9, np.inf, z["x"]).astype(np.float32)
            },
        ),
        "x holds NaN or infinity (example 2)",
    ),
    "npy-label-high": (edit_npy("blobs", "train", lambda z: {"y": z["y"] + 3}), "y_train.npy: labels must be 0..2"),
    "npy-label-negative": (edit_npy("blobs", "train", lambda z: {"y": z["y"] - 1}), "labels must be 0..2"),
    "npy-float64": (edit_npy("blobs", "train", lambda z: {"x": z["x"].astype(np.float64)}), "x is float64"),
    "npy-int-x": (edit_npy("blobs", "train", lambda z: {"x": z["x"].astype(np.int32)}), "x is int32"),
    "npy-float-labels": (edit_npy("blobs", "train", lambda z: {"y": z["y"] * 1.0}), "y_train.npy: y is float64"),
    "npy-columns": (edit_npy("blobs", "train", lambda z: {"x": z["x"][:, :2]}), "x is float32 (63, 2)"),
    "npy-3d": (edit_npy("blobs", "train", lambda z: {"x": z["x"][:, :, None]}), "x is float32 (63, 4, 1)"),
    "npy-empty": (edit_npy("blobs", "train", lambda z: {k: v[:0] for k, v in z.items()}), "0 examples, but"),
    "npy-lengths": (edit_npy("blobs", "train", lambda z: {"y": z["y"][:5]}), "5 targets for 63 inputs"),
    "npy-scalars": (edit_npy("blobs", "train", lambda z: {"x": np.float32(1), "y": np.int64(0)}), "no targets"),
    "npy-objects": (
        edit_npy("blobs", "train", lambda z: {"x": np.array([None] * 63, dtype=object)}),
        "x_train.npy: corrupt or truncated (Array can't be memory-mapped: Python objects in dtype.)",
    ),
}
for problem, (breaks, says) in PROCESSED.items():
    case(f"processed-{problem}@train", TRAIN, breaks, says, subprocess=problem == "npy-label-high")
case(
    "processed-images-float32@train",
    ["stages/train.py", "digits_mlp"],
    edit_npy("digits", "train", lambda z: {"x": z["x"].astype(np.float32)}),
    "x_train.npy: x is float32 (48, 1, 28, 28), expected uint8 (N, 1, 28, 28)",
)
for problem in ("meta-no-task", "meta-std-zero"):
    case(f"processed-{problem}@plot", ["stages/plot.py", "blobs_mlp"], *PROCESSED[problem])
case(
    "processed-test-flipped-byte@plot",
    ["stages/plot.py", "blobs_mlp"],
    flip_byte("processed/blobs/x_test.npy"),
    "x_test.npy: its SHA-256 does not match meta.json",
)
case(
    "processed-test-labels@evaluate",
    EVALUATE,
    edit_npy("blobs", "test", lambda z: {"y": z["y"] + 5}),
    "y_test.npy: labels must",
)
case(
    "processed-test-empty@evaluate",
    EVALUATE,
    edit_npy("blobs", "test", lambda z: {k: v[:0] for k, v in z.items()}),
    "x_test.npy: 0 examples",
)
case(
    "processed-regression-nan@evaluate",
    ["stages/evaluate.py", "line_linear"],
    edit_npy("line", "test", lambda z: {"y": z["y"] * np.nan}),
    "y_test.npy: y holds NaN or infinity",
)

# --- Trained models (evaluate, predict and export read them) ---------------------------------
MODEL_JSON = "models/blobs_mlp/model.json"
MODELS = {
    "json-missing": (remove(MODEL_JSON), "experiment 'blobs_mlp' has not been trained yet"),
    "pt-missing": (remove("models/blobs_mlp/model.pt"), "train it with: dvc repro train@blobs_mlp"),
    "json-garbage": (write(MODEL_JSON, "{"), "model.json: not valid JSON"),
    "json-a-list": (write(MODEL_JSON, "[]"), "model.json: not a model description (a JSON list)"),
    "json-edited": (edit_json(MODEL_JSON, put("n_parameters", 1)), "its json_sha256 does not match its content"),
    "json-no-digest": (edit_json(MODEL_JSON, pop("json_sha256")), "no json_sha256 digest: written by an older"),
    "json-a-folder": (make_dir(MODEL_JSON), "model.json: is a folder, not a JSON file"),
    "pt-a-folder": (make_dir("models/blobs_mlp/model.pt"), "model.pt: is a folder, not a checkpoint"),
    "pt-truncated": (truncate("models/blobs_mlp/model.pt", 200), "model.pt: its SHA-256 does not match model.json"),
    "pt-flipped-byte": (flip_byte("models/blobs_mlp/model.pt"), "the checkpoint is damaged; restore it with"),
    "no-task": (edit_model_json("blobs_mlp", pop("task")), "model.json: task: Field required"),
    "no-classes": (edit_model_json("blobs_mlp", pop("classes")), "model.json: classes: Field required"),
    "no-normalize": (edit_model_json("blobs_mlp", pop("normalize")), "model.json: normalize: Field required"),
    "no-feature-names": (edit_model_json("blobs_mlp", pop("feature_names")), "feature_names: Field required"),
    "feature-names-int": (edit_model_json("blobs_mlp", put("feature_names", 3)), "feature_names: Input should be"),
    "classes-short": (edit_model_json("blobs_mlp", put("classes", ["a"])), "n_outputs: 3, but this classification"),
    "task-regression": (edit_model_json("blobs_mlp", put("task", "regression")), "a regression has no classes"),
    "n-outputs-negative": (edit_model_json("blobs_mlp", put("n_outputs", -1)), "n_outputs: Input should be greater"),
    "shape-string": (edit_model_json("blobs_mlp", put("input_shape", "x")), "input_shape: Input should be a valid"),
    "model-unknown": (edit_model_json("blobs_mlp", put("model", "resnet")), "model.name: unknown model 'resnet'"),
    "kwargs-list": (edit_model_json("blobs_mlp", put("model_kwargs", [1])), "model_kwargs: Input should be a valid"),
    "kwargs-range": (
        edit_model_json("blobs_mlp", put("model_kwargs", {"hidden_sizes": [0]})),
        "model.json: model.hidden_sizes.0: Input should be greater",
    ),
    "std-zero": (edit_model_json("blobs_mlp", put_in("normalize", "std", 0)), "normalize.std: must be finite"),
    "weights-of-another-shape": (
        replace_weights("blobs_mlp", lambda w: {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in w.items()}),
        "model.pt: does not fit model 'mlp'",
    ),
    "weights-missing-a-layer": (replace_weights("blobs_mlp", lambda w: dict(list(w.items())[:-1])), "does not fit"),
    "weights-not-a-dict": (replace_weights("blobs_mlp", lambda w: [1, 2, 3]), "model.pt: does not fit model 'mlp'"),
    "weights-pickle-payload": (
        replace_weights("blobs_mlp", lambda w: w | {"x": Payload()}),
        "model.pt: refused to load: holds more than tensors and plain data",
    ),
}
for problem, (breaks, says) in MODELS.items():
    case(f"model-{problem}@evaluate", EVALUATE, breaks, says, subprocess=problem == "classes-short")
for problem in ("no-normalize", "pt-flipped-byte", "feature-names-int", "weights-pickle-payload"):
    case(f"model-{problem}@predict", [*PREDICT, "inputs/blobs.csv"], *MODELS[problem])
case(
    "model-no-task@export",
    ENTRY_POINTS["export"],
    edit_model_json("line_linear", pop("task")),
    "models/line_linear/model.json: task: Field required",
)
case(
    "model-pt-truncated@export",
    ENTRY_POINTS["export"],
    truncate("models/line_linear/model.pt", 200),
    "models/line_linear/model.pt: its SHA-256 does not match model.json",
)

# --- What plot and report read ----------------------------------------------------------------
PLOT = ["stages/plot.py", "blobs_mlp"]
PLOT_LINE = ["stages/plot.py", "line_linear"]
REPORT = ["stages/report.py"]
PREDICTIONS = "predictions/blobs_mlp.csv"
LOSS_TSV = "metrics/blobs_mlp/train/plots/metrics/train/loss.tsv"
METRICS = "metrics/blobs_mlp/evaluate/metrics.json"
LINE_METRICS = "metrics/line_linear/evaluate/metrics.json"
STATE = {
    "predictions-missing": (PLOT, remove(PREDICTIONS), "blobs_mlp.csv: not found; run the stages before plot"),
    "predictions-empty": (PLOT, write(PREDICTIONS, ""), "no column actual, predicted (has: nothing)"),
    "predictions-columns": (PLOT, write(PREDICTIONS, "a,b\n1,2\n"), "no column actual, predicted (has: a, b)"),
    "predictions-header-only": (PLOT, write(PREDICTIONS, "actual,predicted\n"), "0 rows for 27 test examples"),
    "predictions-ragged": (PLOT, write(PREDICTIONS, "actual,predicted\na\n"), "row 2 has 1 fields, the header 2"),
    "predictions-binary": (PLOT, write(PREDICTIONS, b"\xff\xfe\x00"), "not a readable table"),
    "predictions-class": (
        PLOT,
        lambda root: (root / PREDICTIONS).write_text((root / PREDICTIONS).read_text().replace(",a\n", ",zebra\n", 1)),
        "predicted: 'zebra' is not a class of blobs",
    ),
    "loss-missing": (PLOT, remove(LOSS_TSV), "loss.tsv: not found"),
    "loss-word": (PLOT, write(LOSS_TSV, "step\tloss\n0\t0.5\n1\tabc\n2\t0.1\n"), "row 3: 'abc' is not a number"),
    "loss-columns": (PLOT, write(LOSS_TSV, "a\tb\n1\t2\n"), "loss.tsv: no column step, loss (has: a, b)"),
    "loss-steps": (PLOT, write(LOSS_TSV, "step\tloss\n0\t0.5\n"), "its steps differ from the other files'"),
    "metrics-missing": (PLOT, remove(METRICS), "metrics.json: not found; run `dvc repro evaluate@blobs_mlp`"),
    "metrics-a-list": (PLOT, write(METRICS, "[1]"), "metrics.json: not the metrics evaluate writes"),
    "metrics-weight-word": (PLOT_LINE, edit_json(LINE_METRICS, put("weight", "a")), "weight, bias or least_squares"),
    "metrics-no-least-squares": (PLOT_LINE, edit_json(LINE_METRICS, pop("least_squares")), "weight, bias or least"),
    "report-metrics-garbage": (REPORT, write(METRICS, "{"), "metrics.json: not valid JSON"),
    "report-metrics-list": (REPORT, write(METRICS, "[1]"), "metrics.json: expected a JSON object, found list"),
    "report-accuracy-word": (REPORT, edit_json(METRICS, put("accuracy", "high")), "accuracy: 'high' is not what"),
    "report-mse-bool": (REPORT, edit_json(LINE_METRICS, put("mse", True)), "mse: True is not what evaluate"),
    "report-parameters-word": (REPORT, edit_json(MODEL_JSON, put("n_parameters", "many")), "n_parameters: 'many'"),
    "report-metrics-a-folder": (REPORT, make_dir(METRICS), "metrics.json: is a folder, not a JSON file"),
    "activations-into-a-folder": (
        ["stages/plot.py", "--activations", "plots"],
        lambda root: None,
        "plots: is a folder",
    ),
    "activations-under-a-file": (
        ["stages/plot.py", "--activations", "data/csv/line.csv/act.png"],
        lambda root: None,
        "line.csv: exists and is not a folder",
    ),
    "export-into-a-folder": (
        ["-m", "torchrepro.export", "--experiment", "line_linear", "--out", "models"],
        lambda root: None,
        "models: is a folder where a file belongs",
    ),
    "export-under-a-file": (
        ["-m", "torchrepro.export", "--experiment", "line_linear", "--out", "data/csv/line.csv/x.pt2"],
        lambda root: None,
        "line.csv: exists and is not a folder",
    ),
    "export-unknown-experiment": (
        ["-m", "torchrepro.export", "--experiment", "nope"],
        lambda root: None,
        "unknown experiment 'nope'",
    ),
}
for problem, (argv, breaks, says) in STATE.items():
    case(f"state-{problem}", argv, breaks, says)

# --- What a user gives predict ---------------------------------------------------------------
FEATURES = "f0,f1,f2,f3"
CSV_INPUTS = {
    "extra-field": (f"{FEATURES}\n1,2,3,4\n1,2,3,4,5\n", "a.csv: not a readable CSV file: row 3 has 5 fields"),
    "extra-field-first-row": (f"{FEATURES}\n9,1,2,3,4\n", "row 2 has 5 fields, but the header (row 1) names 4"),
    "short-row": (f"{FEATURES}\n1,2,3,4\n1,2,3\n", "row 3 has 3 fields"),
    "trailing-comma": (f"{FEATURES}\n1,2,3,4,\n", "row 2 has 5 fields"),
    "duplicate-column": ("f0,f1,f2,f3,f0\n1,2,3,4,5\n", "names column 'f0' twice (columns 1 and 5)"),
    "duplicate-after-strip": ("f0,f1,f2,f3, f3\n1,2,3,4,5\n", "names column 'f3' twice"),
    "missing-column": ("f0,f1,f2\n1,2,3\n", "missing column(s) f3; the model needs f0, f1, f2, f3"),
    "misspelt-column": ("f0,f1,f2,F3\n1,2,3,4\n", "missing column(s) f3"),
    "empty": ("", "a.csv: not a readable CSV file: empty, with no header row"),
    "only-blank-lines": ("\n\n\n", "empty, with no header row"),
    "header-only": (f"{FEATURES}\n", "a.csv: no data rows"),
    "not-utf8": (f"{FEATURES}\n1,2,3,\xe94\n".encode("latin-1"), "not UTF-8 text"),
    "utf16": (f"{FEATURES}\n1,2,3,4\n".encode("utf-16"), "not UTF-8 text (byte 0)"),
    "nan": (f"{FEATURES}\n1,2,nan,4\n", "row 2, column 'f2': 'nan' is not a finite number"),
    "infinity": (f"{FEATURES}\n1,2,3,4\n1,-inf,3,4\n", "row 3, column 'f1': '-inf' is not a finite number"),
    "overflow": (f"{FEATURES}\n1,2,3,1e999\n", "row 2, column 'f3': '1e999' is not a finite number"),
    "word": (f"{FEATURES}\n1,2,x,4\n", "row 2, column 'f2': not a number: 'x'"),
    "empty-cell": (f"{FEATURES}\n1,,3,4\n", "row 2, column 'f1': empty cell"),
    "blank-row-then-ragged": (f"{FEATURES}\n\n1,2,3,4\n\n1,2\n", "row 5 has 2 fields"),
    "open-quote": (f'{FEATURES}\n1,2,3,"4\n', "unexpected end of data"),
    "nul": (f"{FEATURES}\n1,2,3,4\x00\n", "a.csv: row 2, column 'f3': not a number: '4\\x00'"),
    "huge-field": (f"{FEATURES}\n1,2,3," + "4" * 200_000 + "\n", "field larger than field limit"),
    "png-bytes": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
}
for problem, (content, says) in CSV_INPUTS.items():
    case(
        f"predict-csv-{problem}",
        [*PREDICT, "a.csv"],
        write("a.csv", content),
        says,
        subprocess=problem == "extra-field",
    )
IMAGE_INPUTS = {
    "not-an-image": (b"hello", "a.png: not a readable PNG or JPEG image"),
    "truncated-png": (digit_png(digit_table().x[0])[:300], "a.png: not a readable PNG or JPEG image"),
    "gif": (other_format("GIF"), "a.png: not a readable PNG or JPEG image"),
    "bmp": (other_format("BMP"), "a.png: not a readable PNG or JPEG image"),
    "tiff": (other_format("TIFF"), "a.png: not a readable PNG or JPEG image"),
    "zero-width": (png_header(0, 28), "a.png: not a readable PNG or JPEG image"),
    "huge": (png_header(100_000, 100_000), "is 10,000,000,000 pixels, over the limit of 50,000,000; pass --max-pixels"),
    "wide": (png_header(2**31 - 1, 1), "over the limit of 50,000,000"),
    "blank": (digit_png(np.full((30, 30), 200)), "a.png: no digit found"),
}
for problem, (content, says) in IMAGE_INPUTS.items():
    case(
        f"predict-image-{problem}",
        [*PREDICT_DIGITS, "a.png"],
        write("a.png", content),
        says,
        subprocess=problem == "huge",
    )
case(
    "predict-image-over-a-lowered-limit",
    [*PREDICT_DIGITS, "--max-pixels", "100", "inputs/digit.png"],
    lambda root: None,
    "28x28 is 784 pixels, over the limit of 100; pass --max-pixels 784",
)
case("predict-image-a-folder", [*PREDICT_DIGITS, "a.png"], make_dir("a.png"), "a.png: is a folder, not an image")
case("predict-image-missing", [*PREDICT_DIGITS, "gone.png"], lambda root: None, "gone.png: file not found")
case("predict-csv-missing", [*PREDICT, "gone.csv"], lambda root: None, "gone.csv: CSV file not found")
case("predict-csv-a-folder", [*PREDICT, "d.csv"], make_dir("d.csv"), "d.csv: is a folder, not a CSV file")
case("predict-image-to-a-table-model", [*PREDICT, "inputs/digit.png"], lambda root: None, "takes a CSV with columns")
case("predict-csv-to-an-image-model", [*PREDICT_DIGITS, "inputs/blobs.csv"], lambda root: None, "takes images")
case(
    "predict-unknown-experiment",
    ["-m", "torchrepro.predict", "--experiment", "x", "a.png"],
    lambda root: None,
    "unknown experiment 'x'",
)
case(
    "predict-device-unknown",
    [*PREDICT, "--device", "gpu", "inputs/blobs.csv"],
    lambda root: None,
    "--device: unknown device 'gpu'",
)
case(
    "predict-device-absent",
    [*PREDICT, "--device", "cuda:99", "inputs/blobs.csv"],
    lambda root: None,
    "'cuda:99' requested but",
)
case("predict-no-files", PREDICT, lambda root: None, "the following arguments are required: FILE", usage=True)
case(
    "predict-max-pixels-0",
    [*PREDICT_DIGITS, "--max-pixels", "0", "inputs/digit.png"],
    lambda root: None,
    "expected a whole number of pixels",
    usage=True,
)
case(
    "predict-max-pixels-word",
    [*PREDICT_DIGITS, "--max-pixels", "lots", "inputs/digit.png"],
    lambda root: None,
    "expected a whole number",
    usage=True,
)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_changes_nothing(pristine, tmp_path, name):
    fuzz_case = CASES[name]
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    fuzz_case.breaks(root)
    before = snapshot(root)

    outcome = run_entry(fuzz_case.argv, root)

    assert outcome.escaped is None, outcome.escaped
    assert_clean_error(fuzz_case, outcome.code, outcome.err)
    assert outcome.warned == []
    assert outcome.out == ""
    assert snapshot(root) == before


def assert_clean_error(fuzz_case: Case, code, err: str) -> None:
    """Exit status 2 and one `error:` line saying what the case says, nothing else on stderr
    but argparse's usage (for a usage error) or the progress bars of a run that diverged."""
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    [line] = [line for line in lines if "error: " in line]
    assert line.startswith("error: ") or fuzz_case.usage, line
    assert fuzz_case.says in line, line
    others = [x for x in lines if x != line]
    if fuzz_case.usage:
        assert err.startswith("usage: "), err
    elif fuzz_case.progress:
        assert all(PROGRESS.match(x) for x in others), err
    else:
        assert others == [], err


# --- The same, as real processes --------------------------------------------------------------


def command(argv: list[str]) -> list[str]:
    return (
        [sys.executable, *argv[:2], *argv[2:]] if argv[0] == "-m" else [sys.executable, str(ROOT / argv[0]), *argv[1:]]
    )


@pytest.fixture(scope="module")
def processes(pristine, tmp_path_factory) -> dict[str, tuple]:
    """The cases marked `subprocess`, each started as `python stages/X.py ...` or `python -m
    torchrepro.predict ...` in its own broken copy; all at once (each pays torch's import)."""
    started = {}
    for name, fuzz_case in CASES.items():
        if fuzz_case.subprocess:
            root = tmp_path_factory.mktemp("process") / "project"
            shutil.copytree(pristine, root, symlinks=True)
            fuzz_case.breaks(root)
            before = snapshot(root)
            process = subprocess.Popen(
                command(fuzz_case.argv), cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            started[name] = (process, root, before)
    return {
        name: (*process.communicate(timeout=300), process.returncode, root, before)
        for name, (process, root, before) in started.items()
    }


@pytest.mark.parametrize("name", [name for name, c in CASES.items() if c.subprocess])
def test_as_a_real_process_too(processes, name):
    out, err, code, root, before = processes[name]
    assert_clean_error(CASES[name], code, err)
    assert out == ""
    assert snapshot(root) == before


def test_the_table_covers_every_entry_point_and_every_kind_of_input():
    entry_points = {c.argv[0] if c.argv[0] != "-m" else c.argv[1] for c in CASES.values()}
    stages = {f"stages/{p.name}" for p in (ROOT / "stages").glob("*.py")}
    assert stages | {"torchrepro.predict", "torchrepro.export"} <= entry_points
    kinds = {name.split("-")[0] for name in CASES}
    assert {"params", "value", "disk", "name", "raw", "processed", "model", "state", "predict"} <= kinds
    assert sum(c.subprocess for c in CASES.values()) >= 5


# --- Odd but valid: accepted, with exactly the plain input's result ----------------------------

PLAIN_ROWS = "f0,f1,f2,f3\n1.5,0.2,-1,0.3\n-2,1,0.1,0\n0,-2,1,0.2\n"
ACCEPTED_CSV = {
    "byte-order-mark": "\ufeff" + PLAIN_ROWS,
    "spaces": PLAIN_ROWS.replace(",", " , ").replace("f0 ,", " f0 ,"),
    "crlf": PLAIN_ROWS.replace("\n", "\r\n"),
    "quoted": PLAIN_ROWS.replace("1.5", '"1.5"'),
    "columns-reordered-and-an-id": "id,f3,f2,f1,f0\n7,0.3,-1,0.2,1.5\n8,0,0.1,1,-2\n9,0.2,1,-2,0\n",
}


def predictions(root: Path, argv: list[str]) -> list[dict]:
    outcome = run_entry([*argv, "--json"], root)
    assert outcome.code == 0 and outcome.escaped is None and outcome.warned == [], (outcome.err, outcome.escaped)
    return json.loads(outcome.out)["predictions"]


@pytest.mark.parametrize("variant", list(ACCEPTED_CSV))
def test_odd_but_valid_csv_gives_the_plain_result(pristine, tmp_path, variant):
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    (root / "plain.csv").write_text(PLAIN_ROWS)
    (root / "odd.csv").write_bytes(ACCEPTED_CSV[variant].encode())
    plain = predictions(root, [*PREDICT, "plain.csv"])
    odd = predictions(root, [*PREDICT, "odd.csv"])
    assert [p["top"] for p in odd] == [p["top"] for p in plain]
    assert [p["line"] for p in odd] == [2, 3, 4]


def test_blank_rows_are_skipped_and_each_prediction_names_its_own_row(pristine, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    (root / "plain.csv").write_text(PLAIN_ROWS)
    rows = PLAIN_ROWS.splitlines()
    (root / "gaps.csv").write_text("\n".join([rows[0], "", rows[1], "", "", rows[2], rows[3], ""]) + "\n")
    plain = predictions(root, [*PREDICT, "plain.csv"])
    gaps = predictions(root, [*PREDICT, "gaps.csv"])
    assert [p["top"] for p in gaps] == [p["top"] for p in plain]
    assert [p["line"] for p in gaps] == [3, 6, 7]  # the rows of the file, not their order among the data


@pytest.mark.parametrize("mode", ["I;16", "P", "RGBA", "1", "LA"])
def test_other_png_modes_give_the_grayscale_result(pristine, tmp_path, mode):
    """A 16-bit PNG would come out all white if converted to 8 bits by clipping; a palette or
    transparent one must be read as the same digit."""
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    digit = digit_table().x[3]
    if mode == "1":
        digit = np.where(digit > 127, 255, 0)
    (root / "plain.png").write_bytes(digit_png(digit))
    if mode == "LA":  # ink as opaque black on transparent paper: what a drawing program exports
        la = np.dstack([np.zeros_like(digit), digit]).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(la, mode="LA").save(buffer, format="PNG")
        (root / "odd.png").write_bytes(buffer.getvalue())
        digit = 255 - digit
    else:
        (root / "odd.png").write_bytes(digit_png(digit, mode))
    plain = predictions(root, [*PREDICT_DIGITS, "plain.png"])
    odd = predictions(root, [*PREDICT_DIGITS, "odd.png"])
    assert odd[0]["prediction"] == plain[0]["prediction"]
    np.testing.assert_allclose(
        [t["probability"] for t in odd[0]["top"]], [t["probability"] for t in plain[0]["top"]], atol=0.02
    )


def test_an_image_past_the_working_size_is_reduced_not_refused(pristine, tmp_path):
    """25 megapixels: under the limit, over WORK_PIXELS, so decoded then box-reduced; the digit
    it shows, enlarged 170 times, reads as the 28x28 original does."""
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    digit = digit_table().x[3]
    (root / "small.png").write_bytes(digit_png(digit))
    big = np.kron(digit, np.ones((180, 180), np.uint8))  # 5040 x 5040
    assert big.size > predict.WORK_PIXELS
    (root / "big.png").write_bytes(digit_png(big))
    small = predictions(root, [*PREDICT_DIGITS, "small.png"])
    large = predictions(root, [*PREDICT_DIGITS, "big.png"])
    assert large[0]["prediction"] == small[0]["prediction"]


# --- A damaged resume checkpoint: a warning and a fresh start, not an error --------------------


RESUME_DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "flipped-byte": lambda data: data[:-50] + bytes([data[-50] ^ 0xFF]) + data[-49:],
    "empty": lambda data: b"",
    "header-not-json": lambda data: b"{not json\n" + data.partition(b"\n")[2],
    "other-format": lambda data: data.replace(b'"torchrepro-resume"', b'"something-else"', 1),
    "no-newline": lambda data: data.partition(b"\n")[0],
}


@pytest.fixture(scope="module")
def fresh_model(pristine, tmp_path_factory) -> tuple[bytes, str, bytes]:
    """model.pt of line_linear trained from scratch, and the name and bytes of the resume
    checkpoint that run left (at the last epoch: a run that finds it intact trains nothing)."""
    root = tmp_path_factory.mktemp("fresh") / "project"
    shutil.copytree(pristine, root, symlinks=True)
    outcome = run_entry(TRAIN_LINE, root)
    assert outcome.code in (0, None), outcome.err
    [checkpoint] = (root / "resume" / "line_linear").glob("*.pt")
    return (root / "models/line_linear/model.pt").read_bytes(), checkpoint.name, checkpoint.read_bytes()


@pytest.mark.parametrize("damage", list(RESUME_DAMAGE))
def test_a_damaged_resume_checkpoint_warns_and_trains_from_scratch(pristine, fresh_model, tmp_path, damage):
    weights, name, checkpoint = fresh_model
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    path = root / "resume" / "line_linear" / name  # where the next run of the same params looks
    path.parent.mkdir(parents=True)
    path.write_bytes(RESUME_DAMAGE[damage](checkpoint))

    outcome = run_entry(TRAIN_LINE, root)

    assert outcome.code in (0, None) and outcome.escaped is None, (outcome.err, outcome.escaped)
    assert "Traceback" not in outcome.err and "error:" not in outcome.err
    warning = [line for line in outcome.err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "ignoring resume checkpoint" in warning[0] and "starting over" in warning[0]
    assert "resumed from" not in outcome.err
    assert (root / "models/line_linear/model.pt").read_bytes() == weights  # as if there had been none
    assert path.read_bytes() == checkpoint  # replaced by this run's own, good one
