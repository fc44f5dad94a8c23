"""Adaptation: which parameters a stage trains (full, LoRA, prompt/prefix tuning, IA3, Houlsby adapters,
BitFit, a reward-head probe), and how the adapted model is saved and loaded.

    model = load_adapted(base_path, task="causal_lm", is_trainable=True)
    model = apply_adaptation(model, config, task="causal_lm")
    print(parameter_summary(model))
    ... train ...
    save_adapted(model, tokenizer, out_dir, config)
    model = load_adapted(out_dir, task="causal_lm")

The names below load their module on first use, so that `rlhf.adaptation.config` (which every stage config
includes) imports neither torch nor peft; peft itself loads only when a peft method or directory is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "apply_adaptation": "apply",
    "count_parameters": "apply",
    "disable_adapter_context": "apply",
    "is_adapted": "apply",
    "parameter_summary": "apply",
    "reward_head_names": "apply",
    "virtual_token_count": "apply",
    "base_model_config": "checkpoint",
    "load_adapted": "checkpoint",
    "merged_lora_state_dict": "checkpoint",
    "save_adapted": "checkpoint",
    "AdaptationConfig": "config",
    "METHODS": "config",
    "PEFT_METHODS": "config",
    "TASKS": "config",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'rlhf.adaptation' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"rlhf.adaptation.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
