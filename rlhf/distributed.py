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


def free_port() -> int:
    """A TCP port nobody listens on now, for a launcher's --master_port or a world of one's MASTER_PORT."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def let_accelerate_see_cpu_ranks() -> None:
    """Make the Trainer count every rank when the `deepspeed` launcher runs it on CPUs.

    accelerate picks a process-group backend only for accelerators or an explicit CPU run; under the
    `deepspeed` launcher with no GPU it picks none and reports a world of one process, so DeepSpeed's
    batch-size check fails (16 != 16 * 1 * 2) and every rank would see the whole data set. Asking it
    for the CPU backend (gloo) keeps everything else DeepSpeed's. Harmless where a GPU is present.
    """
    if "LOCAL_RANK" not in os.environ:
        return
    import torch

    if torch.cuda.is_available():
        return
    from accelerate.state import PartialState

    original = PartialState._prepare_backend
    if getattr(original, "counts_cpu_ranks", False):
        return

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        return original(self, True, sagemaker_dp, backend)

    prepare_backend.counts_cpu_ranks = True
    PartialState._prepare_backend = prepare_backend
