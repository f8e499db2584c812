"""`determinism: portable`: the bytes must not move with the host's vector unit or core count.

The train stage runs for real, as `python stages/train.py`, on a tiny convolutional recipe
(convolutions, max-pooling, dropout and matrix products: every kind of kernel the shipped
models use), under each CPU capability level this host supports and under 1 and 2 threads,
forced through the environment as another host would have them. Each run
must give the same model bytes. A host that lacks a level tests fewer of them.
"""

from __future__ import annotations

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

from conftest import ROOT, digit_table, tiny_params_dict

LEVELS = ("default", "avx2", "avx512")
PROBE = "import torch; print(torch.backends.cpu.get_cpu_capability())"


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
    """A tiny project: 60 generated digits, and a small CNN trained for one epoch."""
    root = tmp_path_factory.mktemp("portable")
    raw = copy.deepcopy(tiny_params_dict(root))
    raw["experiments"] = {
        "digits_cnn": {
            "dataset": "digits",
            "model": {"name": "cnn"},
            "train": {"optimizer": "adam", "lr": 0.001, "batch_size": 16, "epochs": 1},
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = parse_params(raw)
    store.save(prepare.prepare(digit_table(), 0.2, 0, "global"), params.paths.processed_dir("digits"))
    return root


def train_once(project: Path, run: str, env: dict[str, str]) -> str:
    """Train in a private copy of the project's paths; the SHA-256 of the model it wrote."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    for name in ("models", "metrics", "logs", "resume", "plots", "reports", "predictions"):
        raw["paths"][name] = str(project / run / name)
    (project / f"{run}.yaml").write_text(yaml.safe_dump(raw))
    command = [sys.executable, str(ROOT / "stages" / "train.py"), "digits_cnn", "--params", f"{run}.yaml"]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return hashlib.sha256((project / run / "models" / "digits_cnn" / "model.pt").read_bytes()).hexdigest()


@pytest.mark.skipif(not supported_levels(), reason="torch reports no x86 capability level on this CPU")
def test_portable_bytes_do_not_move_with_capability_level_or_thread_count(project):
    levels = supported_levels()
    # Every level, with 1 and 2 threads in turn, and the highest level with both.
    pairs = [(level, 1 + i % 2) for i, level in enumerate(levels)] + [(levels[-1], 2 - (len(levels) - 1) % 2)]
    runs = {
        f"{level}-{threads}": host_env(ATEN_CPU_CAPABILITY=level, OMP_NUM_THREADS=str(threads), MKL_CBWR="AUTO")
        for level, threads in pairs
    }
    assert {threads for _, threads in pairs} == {1, 2}
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(runs, pool.map(lambda run: train_once(project, run, runs[run]), runs)))
    assert len(set(digests.values())) == 1, digests


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
        assert settings == {"determinism": "portable", "cpu_capability": "AVX2", "threads": 1}
        (nnpack_was_on,) = torch.backends.nnpack.set_flags(False)  # returns the setting it replaced
        assert not torch.backends.mkldnn.enabled and not nnpack_was_on
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.mkldnn.enabled = True
        torch.backends.nnpack.set_flags(True)
        torch.use_deterministic_algorithms(False)


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
from torchrepro.train.optim import make_optimizer
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
