"""The demonstrations SFT trains and evaluates on, each prompt checked to leave room for its completion."""

from __future__ import annotations

from typing import Any

from rlhf.data.demonstrations import load_demonstrations
from rlhf.data.prompts import check_prompt_lengths, room_for_a_completion


def load_demonstration_splits(config, tokenizer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) demonstrations of an SFTStageConfig; eval is empty without an eval_file."""
    max_prompt_tokens, setting = room_for_a_completion(config.max_length)
    train = load_demonstrations(config.train_file)
    held_out = load_demonstrations(config.eval_file) if config.eval_file else []
    for records, path in ((train, config.train_file), (held_out, config.eval_file)):
        check_prompt_lengths([r["prompt"] for r in records], tokenizer, path, max_tokens=max_prompt_tokens,
                             setting=setting)
    return train, held_out
