"""Loading models and tokenizers by reference: a registry entry, a local directory, or a hub id.

Weights load from safetensors only, and model code from the hub runs only when the config sets
`trust_remote_code`.
"""

from __future__ import annotations

from typing import Any

from rlhf.errors import ConfigError


def _load(loader, path: str, what: str, **kwargs) -> Any:
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot load {what} from '{path}': {first_line}") from None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, path, "tokenizer", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Many causal LMs ship without a pad token; EOS is the usual stand-in (masks keep it out of losses).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, trust_remote_code: bool = False, dtype: Any = None):
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM.from_pretrained, path, "causal LM", use_safetensors=True,
                 trust_remote_code=trust_remote_code, dtype=dtype)

