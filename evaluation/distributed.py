"""Several evaluation processes under ``torchrun`` (or ``accelerate launch``): the rank and world size from the
environment those launchers set, and a gloo process group for the one thing the processes share - the end of the
run (every process reports whether its share succeeded; rank 0 then reads every process's records and writes the
table). The images and records go to one output folder that every process can see."""
from __future__ import annotations

import os
from typing import Tuple


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
    """A gloo process group while ``world`` > 1 (nothing for one process)."""

    def __init__(self, world: int):
        self.world = world
        if world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group(backend="gloo")
            self._dist = dist

    def all_ok(self, code: int) -> int:
        """Every process's exit code gathered: the worst of them, so no process waits for one that failed."""
        if self.world == 1:
            return code
        codes = [None] * self.world
        self._dist.all_gather_object(codes, code)
        return max(codes)

    def close(self) -> None:
        if self.world > 1 and self._dist.is_initialized():
            self._dist.destroy_process_group()
