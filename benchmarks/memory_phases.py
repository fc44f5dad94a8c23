"""Where a process's memory goes, phase by phase: the peak resident set size within each phase (the kernel's
high-water mark, reset when a phase begins), the RSS when it ends, and optionally the RSS after glibc's
`malloc_trim`, which returns freed heap pages: what trimming removes was freed but kept by the allocator, what
stays is live.

Phases are functions wrapped on their modules or classes (`Phases.wrap`); nested phases each get their own
peak, and the enclosing phase's peak includes theirs. With `cuda`, each phase also gets the peak of
`torch.cuda.max_memory_allocated` within it (the device memory tensors held, reset the same way).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_mb(field: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs); False where the kernel refuses."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Phases:
    def __init__(self, trim: bool = False, cuda: bool = False):
        self.trim = trim
        self.cuda = cuda
        self.overall_cuda_peak_mb = _cuda_allocated_mb(peak=True) if cuda else 0.0
        self.records: list[dict] = []  # one per phase call, in order of ending
        self._open: list[dict] = []  # phases begun and not ended, innermost last
        self.overall_peak_mb = status_mb("VmHWM")

    def _fold(self) -> None:
        """Carry the high-water mark since the last event into every open phase, then reset it."""
        peak = status_mb("VmHWM")
        self.overall_peak_mb = max(self.overall_peak_mb, peak)
        for phase in self._open:
            phase["peak_mb"] = max(phase["peak_mb"], peak)
        reset_high_water_mark()
        if self.cuda:
            cuda_peak = _cuda_allocated_mb(peak=True)
            self.overall_cuda_peak_mb = max(self.overall_cuda_peak_mb, cuda_peak)
            for phase in self._open:
                phase["cuda_peak_mb"] = max(phase["cuda_peak_mb"], cuda_peak)
            import torch

            torch.cuda.reset_peak_memory_stats()

    def begin(self, label: str) -> None:
        self._fold()
        rss = status_mb("VmRSS")
        phase = {"phase": label, "rss_begin_mb": rss, "peak_mb": rss}
        if self.cuda:
            phase["cuda_begin_mb"] = phase["cuda_peak_mb"] = _cuda_allocated_mb()
        self._open.append(phase)

    def end(self) -> None:
        self._fold()
        phase = self._open.pop()
        phase["rss_end_mb"] = status_mb("VmRSS")
        if self.trim:
            malloc_trim()
            phase["rss_trimmed_mb"] = status_mb("VmRSS")
            reset_high_water_mark()
        self.records.append(phase)

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        function = getattr(owner, name)
        phases = self

        @functools.wraps(function)
        def measured(*positional, **keywords):
            phases.begin(label or name)
            try:
                return function(*positional, **keywords)
            finally:
                phases.end()

        setattr(owner, name, measured)

    def peak_mb(self) -> float:
        self._fold()
        return self.overall_peak_mb

    def cuda_peak_mb(self) -> float:
        self._fold()
        return self.overall_cuda_peak_mb


def _cuda_allocated_mb(peak: bool = False) -> float:
    import torch

    return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**20
