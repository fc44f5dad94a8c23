"""Which process this is, read from the launcher's environment (no torch.distributed needed)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys


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


def all_ranks(flag: bool) -> bool:
    """True on every rank when `flag` is True on every rank (a MIN all-reduce); `flag` itself in a world of one."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


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
    from torch.distributed import distributed_c10d

    return list(distributed_c10d._world.pg_names)


def exit_after_success() -> None:
    """End a successful multi-process run here, with everything written and flushed, without the interpreter's
    teardown. That teardown frees objects in no fixed order while gloo's and DeepSpeed's native threads still run,
    and a rank that had trained, saved and registered sometimes aborted in it ('terminate called without an active
    exception', exit status -6; two CI runs in about six, never in 60 runs alone), which failed the whole launch. A
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
        _unlink_cpu_all_reduce_buffer()


def _unlink_cpu_all_reduce_buffer() -> None:
    """DeepSpeed's CPU all-reduce maps one /dev/shm file per rank (66 MB) and never unlinks it, so every
    multi-process CPU run would leave its files, and their memory, behind until a reboot. Each rank removes its
    own name at the end; the mappings of ranks still running stay valid until they exit."""
    name = (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
        f"{os.environ.get('MASTER_PORT', '')}_{os.environ.get('RANK', '0')}"
    )
    with contextlib.suppress(OSError):
        os.unlink(os.path.join("/dev/shm", name))


def sum_over_ranks(tensor):
    """The element-wise sum of `tensor` over all ranks (a new tensor; the input itself when the world is one).

    Statistics PPO takes over a batch (score moments, advantage whitening) go through this, so that every rank
    normalises with the same numbers, those of the whole global batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    device = tensor.device
    reduced = tensor.detach().clone()
    if dist.get_backend() == "nccl":
        reduced = reduced.cuda()
    dist.all_reduce(reduced)
    return reduced.to(device)
