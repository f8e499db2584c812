"""End-to-end fixtures: the project copied into a temporary git repo and driven by the real `dvc` CLI.

One session-scoped repo is reproduced once on tiny params (iris + line5, 2 epochs, CPU) and
committed; each test that changes something works on `shutil.copytree` of it, which is far
cheaper than another `dvc repro` (every stage process pays ~3 s for importing torch).

Stages run `python stages/...`: the venv's bin goes first on PATH, and PYTHONPATH=src (relative,
so it follows the stage's working directory: the copy, a clone or a `dvc exp` executor) makes
each repo run its own copy of the library rather than the editable install's /work/main/src.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv that runs pytest also holds dvc and the stages' python

# Two datasets and two experiments, as small as the pipeline allows; `paths:` as shipped.
TINY_PARAMS = """\
device: cpu
seed: 0
determinism: portable
launcher: python

paths:
  raw: data/raw
  processed: data/processed
  models: models
  metrics: metrics
  plots: plots
  logs: logs
  reports: reports
  resume: .resume
  predictions: predictions

datasets:
  iris:
    source: {name: iris}
    split: {test_size: 0.3333333333333333, seed: 1, stratify: false}
    normalize: global
  line5:
    source: {name: csv, path: data/csv/line5.csv, features: [x], target: y, task: regression}
    split: none
    normalize: none

experiments:
  iris_mlp:
    dataset: iris
    model: {name: mlp, hidden_sizes: [8], activation: sigmoid}
    train: {optimizer: adam, lr: 0.01, batch_size: 16, epochs: 2}
  linreg_line5:
    dataset: line5
    model: {name: linear}
    train: {optimizer: sgd, lr: 0.01, batch_size: 2, epochs: 2}
"""


def dvc_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_", "PYTHON"))}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": "src",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,  # the identity above, no signing or hooks from ~/.gitconfig
        "GIT_CONFIG_NOSYSTEM": "1",
        "MPLBACKEND": "Agg",
        # Stages set their own thread count (`determinism`); OMP_WAIT_POLICY comes from
        # tests/conftest.py, which keeps their threads from spinning when pipelines run side by side.
    }
    return env


class Repo:
    """A git + DVC repo on disk and the commands the tests run in it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.env = dvc_env()

    def __truediv__(self, rel: str) -> Path:
        return self.root / rel

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True)
        result.output = result.stdout + result.stderr  # DVC logs to stdout, stages' errors to stderr
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(cmd)}` exited with {result.returncode} in {self.root}\n"
                f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
            )
        return result

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "dvc"), *args, check=check)

    def dvc_json(self, *args: str) -> Any:
        return json.loads(self.dvc(*args, "--json").stdout)

    def popen_dvc(self, *args: str, log: Path) -> subprocess.Popen:
        """Start dvc in its own process group (so the test can kill the whole tree); output to `log`."""
        with open(log, "wb") as out:
            return subprocess.Popen(
                [str(BIN / "dvc"), *args],
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def background(self, *args: str) -> Background:
        """`dvc *args` started in the background; `.result()` waits and returns its output."""
        return Background(self, *args)

    def python(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "python"), *args, check=check)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("git", *args, check=check)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def copy(self, dest: Path) -> Repo:
        shutil.copytree(self.root, dest, symlinks=True)
        return Repo(dest)

    def clone(self, dest: Path) -> Repo:
        subprocess.run(["git", "clone", "-q", str(self.root), str(dest)], check=True, env=self.env)
        return Repo(dest)

    @staticmethod
    def ran(output: str) -> set[str]:
        """Stages a `dvc repro` output says it executed."""
        return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}

    @staticmethod
    def restored(output: str) -> set[str]:
        """Stages a `dvc repro` output says it restored from the run-cache instead of running."""
        return {line.split("'")[1] for line in output.splitlines() if "is cached - skipping run" in line}

    # params.yaml
    def params(self) -> dict:
        return yaml.safe_load((self / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def set_param(self, dotted: str, value: Any) -> None:
        params = self.params()
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
        self.write_params(params)

    # outputs
    def read_json(self, rel: str) -> Any:
        return json.loads((self / rel).read_text())

    def digest(self, rel: str) -> str:
        return hashlib.sha256((self / rel).read_bytes()).hexdigest()

    def lock_outs(self) -> dict[str, dict[str, str]]:
        """dvc.lock as {stage: {out path: md5}}."""
        lock = yaml.safe_load((self / "dvc.lock").read_text())
        return {name: {o["path"]: o["md5"] for o in stage.get("outs", [])} for name, stage in lock["stages"].items()}


def project_files() -> list[str]:
    """The working tree as git would commit it: tracked plus untracked, not ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in listed.split("\0") if f and (PROJECT / f).is_file()]


def make_project(dest: Path) -> Repo:
    """The project's files in a fresh git repo with the tiny params, nothing reproduced yet.
    The shipped dvc.lock and metrics/ belong to the full params: they are left out."""
    for rel in project_files():
        if rel == "dvc.lock" or rel.startswith(("metrics/", "tests/")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / rel, target)
    (dest / "params.yaml").write_text(TINY_PARAMS)
    repo = Repo(dest)
    repo.git("init", "-q", "-b", "main")
    repo.commit("project at the start of the e2e session")
    return repo


class Background:
    """A dvc command running in its own process group; `result()` waits for it."""

    def __init__(self, repo: Repo, *args: str):
        self.repo, self.log = repo, repo.root.parent / f"{repo.root.name}.log"
        self.process = repo.popen_dvc(*args, log=self.log)

    def result(self, timeout_s: float = 600) -> str:
        returncode = self.process.wait(timeout=timeout_s)
        output = self.log.read_text(errors="replace")
        assert returncode == 0, f"dvc exited with {returncode} in {self.repo.root}\n{output[-6000:]}"
        return output

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_fresh_clone(origin: Repo, dest: Path) -> Background:
    """`git clone` of origin (no DVC cache, no outputs) without the committed metrics, so every
    stage must write its files anew; then `dvc repro` in the background."""
    clone = origin.clone(dest)
    for rel in clone.git("ls-files", "metrics").stdout.split():
        (clone / rel).unlink()
    return Background(clone, "repro")


DEFAULT_PIPELINE = pytest.StashKey[Background]()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    """The shipped pipeline's full `dvc repro` (test_default_pipeline.py) is the longest test:
    start it as soon as the tests are collected, so that it runs on the second core beside all
    the others, and check it last. It clones the commit, never the working tree."""
    wanted = [item for item in items if item.path.name == "test_default_pipeline.py"]
    if not wanted:
        return
    items[:] = [item for item in items if item not in wanted] + wanted
    where = Path(tempfile.mkdtemp(prefix="torchrepro-default-pipeline-"))
    background = start_fresh_clone(Repo(PROJECT), where / "clone")
    config.stash[DEFAULT_PIPELINE] = background
    config.add_cleanup(lambda: (background.stop(), shutil.rmtree(where, ignore_errors=True)))


@pytest.fixture(scope="session")
def reproduced(request, tmp_path_factory) -> Repo:
    """The tiny project after one full `dvc repro`, committed (dvc.lock and metrics included).
    Read-only for tests: copy it (`reproduced.copy(tmp_path / ...)`) before changing anything."""
    repo = make_project(tmp_path_factory.mktemp("e2e") / "reproduced")
    repo.repro_output = repo.dvc("repro").output
    repo.commit("dvc repro on the tiny params")
    # The fresh-clone check is one more full `dvc repro` that needs nothing else: when a test
    # asks for it, start it now so that it runs on the second core beside the other tests.
    repo.fresh_clone = None
    if any("fresh_clone" in item.fixturenames for item in request.session.items):
        repo.fresh_clone = start_fresh_clone(repo, tmp_path_factory.mktemp("fresh") / "clone")
        request.addfinalizer(repo.fresh_clone.stop)
    return repo


@pytest.fixture
def fresh_clone(reproduced, tmp_path) -> Background:
    """A clone of `reproduced` whose `dvc repro` was started in the background (see reproduced)."""
    return reproduced.fresh_clone or start_fresh_clone(reproduced, tmp_path / "clone")


@pytest.fixture
def workspace(reproduced, tmp_path) -> Repo:
    """A private copy of the reproduced repo, cache and git history included."""
    return reproduced.copy(tmp_path / "repo")
