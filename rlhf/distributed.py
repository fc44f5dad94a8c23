"""Which process this is, read from the launcher's environment (no torch.distributed needed)."""

from __future__ import annotations

import os


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Global rank 0: the one process that writes the registry, reports and shared files."""
    return global_rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
