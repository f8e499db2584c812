"""`determinism: portable`: the bytes must not move with the host's vector unit or core count.

The train stage runs for real, as `python stages/train.py`, on each shipped model kind
(twolayernet, an MLP, the CNN with its convolutions, max-pooling and dropout, a linear
regression), under each CPU capability level this host supports, with 1, 2, 3 and 8
intra-op threads asked for through the environment and on one core or all of them, as other
hosts would have them. Every run of a kind must give the same model bytes. A host that lacks
a level tests fewer of them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from torchrepro.core import determinism
from torchrepro.core.params import parse_params
from torchrepro.normalize import prepare, store

from conftest import ROOT, digit_table, regression_table, tiny_params_dict

LEVELS = ("default", "avx2", "avx512")
PROBE = "import torch; print(torch.backends.cpu.get_cpu_capability())"
KINDS = {  # experiment -> (dataset, model, train)
    "digits_twolayernet": ("digits", {"name": "twolayernet", "hidden_size": 32}, {"optimizer": "sgd", "momentum": 0.9}),
    "digits_mlp": ("digits", {"name": "mlp", "hidden_sizes": [64, 32], "activation": "relu"}, {"optimizer": "adam"}),
    "digits_cnn": ("digits", {"name": "cnn"}, {"optimizer": "adam"}),
    "line_linear": ("line", {"name": "linear"}, {"optimizer": "sgd"}),
}


def host_env(**settings: str) -> dict[str, str]:
    """This process's environment without the portable settings the test suite runs under."""
    env = {k: v for k, v in os.environ.items() if k not in determinism.PORTABLE_ENV}
    return env | {"PYTHONPATH": str(ROOT / "src")} | settings


def supported_levels() -> list[str]:
    """The ATen capability levels this host runs when asked: torch ignores a level the CPU lacks."""
    levels = []
    for level in LEVELS:
        probe = [sys.executable, "-c", PROBE]
        shown = subprocess.run(probe, env=host_env(ATEN_CPU_CAPABILITY=level), capture_output=True, text=True)
        if shown.stdout.strip().lower() == level:
            levels.append(level)
    return levels


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project: 60 generated digits and 20 regression rows, one experiment per model kind."""
    root = tmp_path_factory.mktemp("portable")
    raw = copy.deepcopy(tiny_params_dict())
    raw["experiments"] = {
        name: {"dataset": dataset, "model": model, "train": {**train, "lr": 0.01, "batch_size": 16, "epochs": 1}}
        for name, (dataset, model, train) in KINDS.items()
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    with contextlib.chdir(root):
        store.save(prepare.prepare(digit_table(), 0.2, 0, "global"), params.paths.processed_dir("digits"))
        store.save(prepare.prepare(regression_table(), None, 0, "per_feature"), params.paths.processed_dir("line"))
    return root


# The train stage's entry point, run for each experiment in turn in one process: the process
# start-up (torch's import) is most of a tiny run's time.
TRAIN = (
    "import runpy, sys; from torchrepro.core.cli import stage\n"
    f"main = runpy.run_path({str(ROOT / 'stages' / 'train.py')!r})['main']\n"
    "for experiment in sys.argv[2:]:\n"
    "    stage('', 'experiment', main, [experiment, '--params', sys.argv[1]])"
)


def train_once(project: Path, run: str, env: dict[str, str], cores: set[int] | None) -> dict[str, str]:
    """Train every kind in a private copy of the project's paths: the SHA-256 of each model."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for name in ("models", "metrics", "logs", "resume", "plots", "reports", "predictions"):
        raw["paths"][name] = f"{run}/{name}"
    (project / f"{run}.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-c", TRAIN, f"{run}.yaml", *KINDS]
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    done = subprocess.run(
        command, cwd=project, env=env, preexec_fn=preexec, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    models = project / run / "models"
    return {exp: hashlib.sha256((models / exp / "model.pt").read_bytes()).hexdigest() for exp in KINDS}


@pytest.mark.skipif(not supported_levels(), reason="torch reports no x86 capability level on this CPU")
def test_portable_bytes_do_not_move_with_capability_level_or_thread_count(project):
    levels = supported_levels()
    one_core = {min(os.sched_getaffinity(0))}
    # 1, 2, 3 and 8 threads asked for, each level at least once, the first run on one core.
    runs = {
        f"{levels[i % len(levels)]}-{threads}": (
            host_env(ATEN_CPU_CAPABILITY=levels[i % len(levels)], OMP_NUM_THREADS=str(threads), MKL_CBWR="AUTO"),
            one_core if i == 0 else None,
        )
        for i, threads in enumerate((1, 2, 3, 8))
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(runs, pool.map(lambda run: train_once(project, run, *runs[run]), runs)))
    for experiment in KINDS:
        found = {run: models[experiment] for run, models in digests.items()}
        assert len(set(found.values())) == 1, (experiment, found)


def test_prepare_environment_sets_what_torch_reads_at_import():
    env: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx512", "OMP_NUM_THREADS": "8"}
    determinism.prepare_environment("portable", env)
    assert env == determinism.PORTABLE_ENV
    untouched = {"OMP_NUM_THREADS": "8"}
    determinism.prepare_environment("host", untouched)
    assert untouched == {"OMP_NUM_THREADS": "8"}


def test_apply_portable_pins_threads_and_kernels():
    try:
        settings = determinism.apply("portable", torch.device("cpu"))
        assert settings == {
            "determinism": "portable",
            "cpu_capability": "AVX2",
            "threads": determinism.PORTABLE_THREADS,
        }
        (nnpack_was_on,) = torch.backends.nnpack.set_flags(False)  # returns the setting it replaced
        assert not nnpack_was_on
        # On the CPU, deterministic algorithms would only cost the compiler stack's import.
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.nnpack.set_flags(True)


def test_apply_host_changes_nothing():
    before = (torch.get_num_threads(), torch.backends.mkldnn.enabled, torch.are_deterministic_algorithms_enabled())
    assert determinism.apply("host", torch.device("cpu"))["determinism"] == "host"
    assert (
        torch.get_num_threads(),
        torch.backends.mkldnn.enabled,
        torch.are_deterministic_algorithms_enabled(),
    ) == before


def test_a_host_without_the_pinned_kernels_is_warned_about(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    determinism._check_capability()
    err = capsys.readouterr().err
    assert err.startswith("warning: determinism: portable: ") and "DEFAULT" in err and err.count("\n") == 1


# The optimizer steps of the shipped recipes, as the train stage builds them (make_optimizer),
# on fixed parameters and gradients; prints the SHA-256 of the parameters after 20 steps.
STEPS = """
import hashlib, sys, torch
from torchrepro.core.params import Train
from torchrepro.optim import make_optimizer
torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
digest = hashlib.sha256()
for name, options in [("adam", {}), ("adamw", {}), ("sgd", {"momentum": 0.9}), ("adagrad", {})]:
    weights = torch.nn.Parameter(torch.randn(4099, generator=generator))
    optimizer = make_optimizer([weights], Train(optimizer=name, lr=0.01, **options), torch.device("cpu"))
    for _ in range(20):
        weights.grad = torch.randn(4099, generator=generator)
        optimizer.step()
    digest.update(weights.detach().numpy().tobytes())
print(digest.hexdigest())
"""


def test_optimizer_steps_do_not_move_with_mkls_code_branch():
    """MKL picks its code by CPU, and by vendor even in its COMPATIBLE branch: torch's unfused
    optimizers take their square roots through MKL's vector math, and their last bits then
    differ between an Intel and an AMD host. Forcing MKL's other branches on this host stands in
    for those hosts: the steps the recipes run (fused kernels, ATen's own code) must not move."""

    def steps(branch: str) -> str:
        env = host_env(ATEN_CPU_CAPABILITY="avx2", MKL_CBWR=branch, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, check=True).stdout

    branches = ("COMPATIBLE", "SSE4_2", "AVX2")
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(branches, pool.map(steps, branches)))
    assert len(set(digests.values())) == 1, digests
