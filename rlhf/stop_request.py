"""SIGTERM (what a cluster sends before preemption or at its time limit) as a flag that the training loops check
after each step, so that a run saves a checkpoint and exits cleanly instead of dying mid-update."""

from __future__ import annotations

import signal

import torch


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def any_rank(self) -> bool:
        """True when any rank was signalled: all ranks must stop together (saving is a collective)."""
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.requested else 0.0])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
