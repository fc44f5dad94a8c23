"""Adaptation: which parameters a stage trains (full, LoRA, prompt/prefix tuning, IA3, Houlsby adapters,
BitFit, a reward-head probe), and how the adapted model is saved and loaded.

    model = load_adapted(base_path, task="causal_lm", is_trainable=True)
    model = apply_adaptation(model, config, task="causal_lm")
    print(parameter_summary(model))
    ... train ...
    save_adapted(model, tokenizer, out_dir, config)
    model = load_adapted(out_dir, task="causal_lm")

peft is imported only when a peft method or a peft directory is used.
"""

from rlhf.adaptation.apply import (
    apply_adaptation,
    count_parameters,
    disable_adapter_context,
    is_adapted,
    parameter_summary,
    reward_head_names,
    virtual_token_count,
)
from rlhf.adaptation.checkpoint import load_adapted, merged_lora_state_dict, save_adapted
from rlhf.adaptation.config import METHODS, PEFT_METHODS, TASKS, AdaptationConfig

__all__ = [
    "AdaptationConfig", "METHODS", "PEFT_METHODS", "TASKS",
    "apply_adaptation", "count_parameters", "disable_adapter_context", "is_adapted", "load_adapted",
    "merged_lora_state_dict", "parameter_summary", "reward_head_names", "save_adapted", "virtual_token_count",
]
