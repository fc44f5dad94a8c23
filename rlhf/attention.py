"""Which attention kernel a model runs: the default, and a one-line error for flash attention that is not installed.

Import-light: transformers is imported only to ask whether flash-attn is installed.
"""

from __future__ import annotations

from rlhf.errors import ConfigError

# transformers' default where a model supports it; flash_attention_2 needs the flash-attn package and a GPU.
DEFAULT_ATTENTION = "sdpa"
FLASH_ATTENTION = {f"flash_attention_{n}": f"is_flash_attn_{n}_available" for n in (2, 3, 4)}  # transformers.utils


def is_flash_attention(attention_implementation: str | None) -> bool:
    """Whether an attention implementation runs flash attention's kernels (2, 3, 4 and the hub kernels built on
    them): variable-length sequences of a flattened batch (cu_seq_lens), and no dense mask, custom ones included."""
    return "flash" in (attention_implementation or "")


def check_attention(attn_implementation: str) -> None:
    """A flash attention that is asked for but not installed is a one-line error before any model loads
    (transformers would fail at the first load, with a page of advice)."""
    if attn_implementation not in FLASH_ATTENTION:
        return
    from transformers import utils

    if not getattr(utils, FLASH_ATTENTION[attn_implementation])():
        raise ConfigError(
            f"attn_implementation '{attn_implementation}' needs the flash-attn package, which is not "
            f"installed here (pip install flash-attn on a CUDA machine); use '{DEFAULT_ATTENTION}'"
        )
