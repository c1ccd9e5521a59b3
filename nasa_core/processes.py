"""Several processes under ``torchrun`` (or ``accelerate launch``), for the evaluation and NASA-T's recipe: the rank
and world size from the environment those launchers set, and a process group for what the processes share (gloo on
CPU, NCCL where the tensors to sum live on CUDA). Pure torch."""
from __future__ import annotations

import os
from typing import List, Tuple

import torch


def environment() -> Tuple[int, int]:
    """(rank, world size) from RANK / WORLD_SIZE; (0, 1) when not launched by torchrun or accelerate."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: not "
                         "integers (set by torchrun / accelerate launch; unset them for one process)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world}: the rank must be in 0 .. WORLD_SIZE-1")
    return rank, world


class Group:
    """The process group while ``world`` > 1 (nothing for one process). ``backend``: "gloo" or "nccl"."""

    def __init__(self, world: int, backend: str = "gloo"):
        self.world = world
        if world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group(backend=backend)
            self._dist = dist

    def all_ok(self, code: int) -> int:
        """Every process's exit code gathered: the worst of them, so no process waits for one that failed."""
        if self.world == 1:
            return code
        codes = [None] * self.world
        self._dist.all_gather_object(codes, code)
        return max(codes)

    def all_reduce(self, tensors: List[torch.Tensor]) -> None:
        """Sum each tensor in place over the processes."""
        if self.world > 1:
            for t in tensors:
                self._dist.all_reduce(t)

    def barrier(self) -> None:
        if self.world > 1:
            self._dist.barrier()

    def close(self) -> None:
        """Wait for every process (so none ends while rank 0 still writes the results: torchrun stops the others
        when one ends badly), then the group is destroyed."""
        if self.world > 1 and self._dist.is_initialized():
            self._dist.barrier()
            self._dist.destroy_process_group()
