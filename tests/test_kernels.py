"""`determinism: portable` at the level of single kernels: every module output, gradient and
optimizer step of the shipped model kinds (tests/kernel_bytes.py) must give the same bytes
whatever the host's core count, its thread settings, and its CPU vendor.

The vendor check runs the same script on a CPU that QEMU emulates (an Intel Haswell: AVX2 and
FMA, Intel's CPUID), so MKL and oneDNN take the code paths they take on an Intel host. It is a
slow test (about 40 s): `make test-vendors` installs QEMU and runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from torchrepro.core import determinism

from conftest import ROOT

SCRIPT = ROOT / "tests" / "kernel_bytes.py"
QEMU = shutil.which("qemu-x86_64")


def kernel_bytes(*prefix: str, cores: set[int] | None = None, **env: str) -> dict[str, str]:
    """Run tests/kernel_bytes.py in a fresh process; `cores`: the CPUs it may run on."""
    environ = {k: v for k, v in os.environ.items() if k not in determinism.PORTABLE_ENV}
    environ |= {"PYTHONPATH": str(ROOT / "src")} | env
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    done = subprocess.run(
        [*prefix, sys.executable, str(SCRIPT)],
        env=environ,
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_do_not_move_with_the_hosts_cores_or_thread_settings():
    """One core or all of them, a host asking for 1 or 8 threads: portable runs its own count."""
    one_core = kernel_bytes(cores={min(os.sched_getaffinity(0))}, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    every_core = kernel_bytes(OMP_NUM_THREADS="8", MKL_DYNAMIC="TRUE", ATEN_CPU_CAPABILITY="default")
    assert one_core["threads"] == every_core["threads"] == str(determinism.PORTABLE_THREADS)
    assert len(one_core) > 80  # every module of every model kind, not an empty run
    moved = sorted(k for k in one_core if one_core[k] != every_core.get(k))
    assert not moved, moved


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 is not installed (make test-vendors installs it)")
def test_an_emulated_intel_cpu_computes_the_same_bytes():
    native = kernel_bytes()
    intel = kernel_bytes(QEMU, "-cpu", "Haswell-v4")
    moved = sorted(k for k in native if native[k] != intel.get(k))
    assert not moved, moved
