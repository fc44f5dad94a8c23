"""Host memory that a stage frees goes back to the operating system, so that a process's resident set follows
what it holds.

glibc's malloc serves requests below its mmap threshold from heaps it keeps after a free, and raises that
threshold (up to 32 MiB) each time a larger block is freed. After the first few frees every layer-sized tensor
comes from those heaps, so what ZeRO-3 gathers and frees module by module, and the optimiser's temporaries,
stay in the resident set as if held: on the 100M-parameter memory benchmark (2 processes, ZeRO-3, fp32) the
peak per process was 5451 MB with the default and 3381 MB with a fixed 1 MiB threshold; ZeRO-0's hardly moved
(4368 -> 4309 MB), since it frees little. A fixed threshold sends every block of at least that size to its own
mapping, unmapped at free. 128 KiB, glibc's own starting value kept fixed, took another 100 MB off ZeRO-3's
steady state there than 1 MiB (the many mid-sized blocks of small modules and activations). Elsewhere than
glibc nothing changes.

It costs time: every block of 128 KiB or more is then mapped and unmapped by a system call and faulted in page
by page. On the demo's reward model (ZeRO-0, one process) an epoch took 73.4 s with it and 46.9 s without (system
time 29 s against 2 s). So the stages set it only when a model is sharded by ZeRO-3, which gathers and frees
whole layers all the time (`zero3_in`); without ZeRO-3 little is freed that the allocator should give back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter; setting it also turns the dynamic adjustment off
MMAP_THRESHOLD_BYTES = 128 << 10


def return_freed_blocks_to_os(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Blocks of `threshold_bytes` or more are mapped on their own and unmapped when freed. True when set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)) == 1


def zero3_in(deepspeed_configs: Iterable[dict[str, Any] | str | None]) -> bool:
    """Whether any of these DeepSpeed configs (mappings, JSON file paths, or None for no DeepSpeed) is ZeRO
    stage 3, under which this setting pays for itself."""
    from rlhf.config import is_zero3, load_deepspeed_config

    loaded = (
        load_deepspeed_config(ds_config) if isinstance(ds_config, str) and ds_config else ds_config
        for ds_config in deepspeed_configs
    )
    return any(isinstance(ds_config, dict) and is_zero3(ds_config) for ds_config in loaded)
