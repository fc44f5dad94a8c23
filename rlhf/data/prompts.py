"""Prompts: read from any data file (PPO's training and held-out prompts, labeling), and checked for length.

A prompt is text or a list of chat messages, as in every other format of the pipeline.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlhf.data.formatting import Prompt, prompt_token_ids
from rlhf.data.rankings import is_prompt
from rlhf.data.records import read_records
from rlhf.errors import DataError


def load_prompts(path: str) -> list[Prompt]:
    """The 'prompt' of every record (text, or a list of chat messages)."""
    prompts = []
    for raw in read_records(path):
        if raw.error is not None:
            raise DataError(raw.problem, file=path, record=raw.number)
        if not isinstance(raw.value, dict) or "prompt" not in raw.value:
            raise DataError("is missing", file=path, record=raw.number, field="prompt")
        if not is_prompt(raw.value["prompt"]):
            raise DataError("must be a non-empty string or a list of chat messages {role, content}", file=path,
                            record=raw.number, field="prompt")
        prompts.append(raw.value["prompt"])
    if not prompts:
        raise DataError("no prompts", file=path)
    return prompts


def check_prompt_length(tokenizer, prompt: Prompt, *, max_tokens: int, setting: str, file: str,
                        record: Any) -> list[int]:
    """The prompt's token ids, or a DataError naming the record when there are more than `max_tokens`.

    `setting` names the config key behind the limit, so the message says what to change.
    """
    ids = prompt_token_ids(tokenizer, prompt)
    if len(ids) > max_tokens:
        raise DataError(f"prompt is {len(ids)} tokens, over the {max_tokens} that {setting} allows",
                        file=file, record=record, field="prompt")
    return ids


def check_prompt_lengths(prompts: Sequence[Prompt], tokenizer, path: str, *, max_tokens: int, setting: str) -> None:
    """`check_prompt_length` for each prompt of a file, numbered from 1 as its records are."""
    for number, prompt in enumerate(prompts, start=1):
        check_prompt_length(tokenizer, prompt, max_tokens=max_tokens, setting=setting, file=path, record=number)


def room_for_a_completion(max_length: int) -> tuple[int, str]:
    """(max_tokens, setting) for a prompt that must leave a completion at least one token of `max_length`."""
    return max_length - 1, f"max_length {max_length} (one token at least is the completion's)"
