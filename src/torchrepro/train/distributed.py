"""Training across processes with torch.distributed: one experiment, many ranks.

The train stage's command prefix is the `launcher` param. `python` runs one process; under
`torchrun` (which sets WORLD_SIZE, RANK and LOCAL_RANK) or SLURM's `srun` (SLURM_NTASKS,
SLURM_PROCID, SLURM_LOCALID, with MASTER_ADDR and MASTER_PORT set by the job script) each
process is one rank of a process group: gloo on CPU, nccl on CUDA, each rank on the GPU of
its LOCAL_RANK. DistributedDataParallel averages the gradients; the recipe's batch_size stays
the global batch and each rank takes its slice of every batch of the seeded permutation.
Rank 0 alone writes the model, metrics, log and resume checkpoints.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchrepro.core.errors import ParamsError

if TYPE_CHECKING:
    import torch

# (world size, rank, local rank) as each launcher names them.
LAUNCHERS = {
    "torchrun": ("WORLD_SIZE", "RANK", "LOCAL_RANK"),
    "srun": ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
}


def _stop_with_the_launcher(every_s: float = 0.5) -> None:
    """End this rank when the process that launched it is gone. torchrun starts each rank in
    a session of its own, so a kill -9 of torchrun (or of `dvc repro` around it) does not reach
    the ranks: left alone they would go on training and writing outputs that nobody waits for."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        print(f"error: the launcher (process {parent}) is gone; stopping this rank", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


@dataclass(frozen=True)
class World:
    """This process's place among the ranks that train one experiment."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, launcher: str = "python", env: dict[str, str] | os._Environ = os.environ) -> World:
        """The world that torchrun or srun describe in the environment; one process otherwise.
        SLURM's names count only under an `srun` launcher: a job script's own shell has them too."""
        if "WORLD_SIZE" in env:
            launcher = "torchrun"
        elif launcher.split()[0] == "srun" and "SLURM_NTASKS" in env:
            launcher = "srun"
        else:
            return cls()
        names = LAUNCHERS[launcher]
        try:
            size, rank, local_rank = (int(env[name]) for name in names)
        except (KeyError, ValueError):
            shown = ", ".join(f"{n}={env.get(n)!r}" for n in names)
            raise ParamsError(f"launcher: {launcher}'s environment is incomplete: {shown}") from None
        if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < size):
            raise ParamsError(f"launcher: {names[0]}={size}, {names[1]}={rank}: the rank must lie in [0, size)")
        if size > 1 and launcher == "srun":
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in env:
                    raise ParamsError(
                        f"launcher: srun started {size} tasks but {name} is not set; export MASTER_ADDR "
                        "(the first node's host name) and MASTER_PORT (a free port) in the job script"
                    )
            # torch.distributed's env:// rendezvous reads torchrun's names.
            os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(local_rank))
        return cls(size, rank, local_rank)

    def part(self, start: int, end: int) -> tuple[int, int]:
        """This rank's rows of the batch [start, end): contiguous, sizes within one of each other."""
        n = end - start
        return start + n * self.rank // self.size, start + n * (self.rank + 1) // self.size

    def device(self, device: torch.device, key: str) -> torch.device:
        """The device of this rank: a multi-process CUDA run puts each rank on its LOCAL_RANK's GPU."""
        import torch

        if self.size == 1 or device.type != "cuda":
            return device
        if device.index is not None:
            raise ParamsError(
                f"{key}: {str(device)!r} names one GPU, but the launcher started {self.size} processes, "
                "each of which takes the GPU of its LOCAL_RANK; use cuda"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise ParamsError(
                f"launcher: LOCAL_RANK {self.local_rank} needs GPU {self.local_rank}, but this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, nccl on CUDA); nothing for one process."""
        if self.size == 1:
            return
        import torch.distributed as dist

        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        _stop_with_the_launcher()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over the ranks, in place; itself for one process."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def agree(self, value: int, what: str) -> None:
        """Fail unless every rank has the same `value` (say, the epoch it resumes from)."""
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        bounds = torch.tensor([value, -value], device=device)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        if bounds[0].item() != -bounds[1].item():
            raise ParamsError(
                f"the {self.size} ranks disagree on {what} (from {-bounds[1].item()} to {bounds[0].item()}); "
                "they must share one working tree (a shared file system across nodes)"
            )
