"""Host memory that a ZeRO-3 stage frees goes back to the operating system, so that its resident set follows what
it holds.

glibc keeps freed blocks below its mmap threshold, and raises that threshold as large blocks are freed, so what
ZeRO-3 gathers and frees layer by layer would stay resident; a fixed threshold maps such blocks on their own and
unmaps them at free. Each mapping costs a system call, so stages set it only under ZeRO-3 (`zero3_in`), which
frees whole layers all the time. Measurements: benchmarks/RESULTS.md, sections 4b and 7.
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
