"""Prompts: read from any data file (PPO's training and held-out prompts, labeling). Their length is the
`overlong` policy's business (rlhf.data.overlong).

A prompt is text or a list of chat messages, as in every other format of the pipeline.
"""

from __future__ import annotations

from rlhf.data.formatting import Prompt
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
            raise DataError(
                "must be a non-empty string or a list of chat messages {role, content}",
                file=path,
                record=raw.number,
                field="prompt",
            )
        prompts.append(raw.value["prompt"])
    if not prompts:
        raise DataError("no prompts", file=path)
    return prompts
