"""The `determinism` param: which results a run promises to reproduce, and where.

portable (the default) gives the same bytes on every x86-64 CPU with AVX2 or AVX-512,
Intel or AMD, whatever its core count. A float sum depends on the order of its terms, so
every library that picks an order from the host is pinned:
  - ATen's CPU kernels run their AVX2 build (ATEN_CPU_CAPABILITY=avx2); on an AVX-512 host
    torch would otherwise sum 16 floats at a time instead of 8.
  - MKL, which does torch's matrix products, runs its COMPATIBLE branch of conditional
    numerical reproducibility (MKL_CBWR=COMPATIBLE): the one branch Intel documents as giving
    the same results on Intel and non-Intel CPUs. Its faster branches (AVX2, with or without
    STRICT) are for Intel CPUs only: on AMD, MKL runs its AUTO branch instead, and an
    emulated Intel CPU computes other bytes for some of the recipes' matrix products
    (docs/performance.md). MKL's vector math (VML: exp, log, sqrt, tanh of whole tensors)
    still picks its code by vendor, so the optimizers run fused kernels, ATen's own code
    (optim.py), and one that has none is warned about.
  - A fixed number of intra-op threads, PORTABLE_THREADS, on every host whatever its core
    count: MKL's COMPATIBLE branch, ATen's parallel reductions and oneDNN's convolutions
    split their work by thread count, so the count is part of the result. MKL_DYNAMIC=FALSE
    keeps MKL from using fewer threads than asked where it sees fewer cores.
  - oneDNN, which does the convolutions, runs its AVX2 code (ONEDNN_MAX_CPU_ISA=AVX2): its
    kernels pick their code by ISA, not by vendor. NNPACK is off: it picks kernels by cache size.
  - On CUDA: deterministic algorithms, a fixed cuBLAS workspace, cuDNN without autotuning
    and no TF32, so two runs on the same GPU model give the same bytes. On the CPU every
    kernel the models run is deterministic already, and torch.use_deterministic_algorithms
    would cost every stage the import of torch's compiler stack and a NaN fill of each new
    tensor, so it is left off there.
host uses torch's defaults: every core, oneDNN at the host's widest vectors, MKL's own choice.
Faster; the same bytes only on the same machine with the same thread count.

The environment variables must be set before torch is imported: the stage entry points call
`prepare_environment` first, then import the library, then call `apply`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from typing import Any

from torchrepro.core.errors import warn

# Two: what almost every machine has, CI's included. More would be faster on a big host and
# slower on a small one, where the threads would share cores; the bytes would differ either way.
PORTABLE_THREADS = 2
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": str(PORTABLE_THREADS),
    "MKL_NUM_THREADS": str(PORTABLE_THREADS),
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # what torch.use_deterministic_algorithms needs for cuBLAS
}
PORTABLE_CAPABILITY = "AVX2"  # as torch.backends.cpu.get_cpu_capability() names it


def prepare_environment(mode: str, env: MutableMapping[str, str] = os.environ) -> None:
    """Before torch is imported: set what the mode needs in the environment."""
    if mode == "portable":
        env.update(PORTABLE_ENV)


def apply(mode: str, device: Any) -> dict[str, Any]:
    """After torch is imported: configure it for `mode` on `device` (a torch.device).
    Returns what was in force, for the train log."""
    import torch

    if mode == "portable":
        torch.set_num_threads(PORTABLE_THREADS)
        torch.backends.nnpack.set_flags(False)
        if device.type == "cuda":
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _check_capability()
    return {
        "determinism": mode,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def _check_capability() -> None:
    """Say so when the bytes cannot match other hosts: torch was imported before the
    environment was set, or this CPU has no AVX2 (then torch runs its DEFAULT kernels)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        why = f"this is a {platform.machine()} CPU; the portable results are those of x86-64 CPUs"
    elif capability != PORTABLE_CAPABILITY:
        why = f"torch runs its {capability} CPU kernels here, not {PORTABLE_CAPABILITY}"
    else:
        return
    warn(f"determinism: portable: {why}; results may differ from other machines'")
