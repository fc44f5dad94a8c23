"""SIGTERM (what a cluster sends before preemption or at its time limit) as a flag that the training loops check
after each step, so that a run saves a checkpoint and exits cleanly instead of dying mid-update."""

from __future__ import annotations

import signal

from rlhf import distributed


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def any_rank(self) -> bool:
        """True when any rank was signalled: all ranks must stop together (saving is a collective)."""
        return distributed.any_rank(self.requested)

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
