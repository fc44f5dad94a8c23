"""Which process this is, and the collectives the stages run across processes.

Rank and world size come from the launcher's environment, so asking them needs no torch.distributed. Every
collective goes through `all_reduce`: in a world of one it is the identity, and on NCCL it reduces on the GPU.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from rlhf import _compat


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Global rank 0: the one process that writes the registry, reports and shared files."""
    return global_rank() == 0


def free_port() -> int:
    """A TCP port nobody listens on now, for a launcher's --master_port or a world of one's MASTER_PORT."""

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def in_multi_process_world() -> bool:
    """Whether a process group with more than one rank is up: collectives are needed and can run."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(tensor, op: str = "sum"):
    """`tensor` reduced element-wise over every rank (`op`: sum, min or max), as a new tensor on `tensor`'s device;
    `tensor` itself in a world of one. NCCL reduces CUDA tensors only, so there the reduction runs on this rank's
    GPU."""
    if not in_multi_process_world():
        return tensor
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else tensor.device
    reduced = tensor.detach().clone().to(device)
    dist.all_reduce(reduced, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return reduced.to(tensor.device)


def all_ranks(flag: bool) -> bool:
    """True on every rank when `flag` is True on every rank; `flag` itself in a world of one."""
    import torch

    return bool(all_reduce(torch.tensor([int(flag)]), "min").item())


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank; `flag` itself in a world of one."""
    import torch

    return bool(all_reduce(torch.tensor([int(flag)]), "max").item())


def sum_over_ranks(tensor):
    """The element-wise sum of `tensor` over all ranks (a new tensor; the input itself when the world is one).

    Statistics PPO takes over a batch (score moments, advantage whitening) go through this, so that every rank
    normalises with the same numbers, those of the whole global batch.
    """
    return all_reduce(tensor, "sum")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over all ranks (one all-reduce for the lot)."""
    if not in_multi_process_world():
        return dict(values)
    import torch

    keys = sorted(values)
    summed = sum_over_ranks(torch.tensor([float(values[key]) for key in keys], dtype=torch.float64))
    return dict(zip(keys, (summed / world_size()).tolist()))


def finish_pending_work() -> None:
    """At the end of a successful multi-process CPU run, a barrier on every process group this rank is in, in the
    order they were made: a gloo barrier first waits for every operation its group still has queued. The default
    group is not enough: ZeRO-3 gathers and reduces on DeepSpeed's own data-parallel group, whose work a barrier on
    the default group does not wait for. Not on NCCL, whose destroy aborts its own work, and not after a failure,
    where a peer may never arrive."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        for group in groups_in_creation_order():
            dist.barrier(group=group)


def groups_in_creation_order() -> list:
    """Every process group this rank belongs to, the default group first. torch registers groups as they are made
    and every rank makes them in the same order, so collectives over this list cannot wait on each other in a
    cycle."""
    return _compat.process_groups_in_creation_order()


def exit_after_success() -> None:
    """End a successful multi-process run here, with everything written and flushed, without the interpreter's
    teardown. That teardown frees objects in no fixed order while gloo's and DeepSpeed's native threads still run,
    and a rank that had trained, saved and registered sometimes aborted in it ('terminate called without an active
    exception', exit status -6), which failed the whole launch. A
    world of one returns as usual: tests and notebooks call the stages in their own process."""

    if world_size() == 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def shutdown() -> None:
    """Leave the process group at the end of a multi-process run, as torch asks: a rank that ends first then exits
    cleanly instead of tearing the group's threads down at interpreter exit while the others still work.

    A world of one keeps its group: DeepSpeed caches it, and a second run in the same process (tests, notebooks)
    would find it destroyed.
    """
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # DeepSpeed maps a /dev/shm file per rank and never unlinks it: without this every run would leave its
        # files, and their memory, behind until a reboot.
        _compat.unlink_deepspeed_cpu_all_reduce_buffer()
