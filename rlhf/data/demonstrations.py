"""Demonstrations: prompt/completion records, or conversational `messages` (SFT, the RM's normalisation, PPO-ptx).

Two shapes are accepted, as TRL documents them:
- `{"prompt": str, "completion": str}`; the loss is on the completion (unless the config asks
  for instruction modeling);
- `{"messages": [{"role": ..., "content": ...}, ...]}`, rendered with the tokenizer's chat
  template. The last message must be the assistant's: it is the completion, everything before
  it the prompt, so the loss is on that reply without needing generation markers in the template.
"""

from __future__ import annotations

from typing import Any

from rlhf.data.records import read_records
from rlhf.errors import DataError

ROLES = {"system", "user", "assistant", "tool"}


def load_demonstrations(path: str) -> list[dict[str, Any]]:
    """Records as TRL's prompt/completion dicts (plain text, or conversational lists of messages)."""
    demonstrations = []
    for raw in read_records(path):
        if raw.error is not None:
            raise DataError(raw.problem, file=path, record=raw.number)
        if not isinstance(raw.value, dict):
            raise DataError(
                "must be an object with 'prompt' and 'completion', or 'messages'", file=path, record=raw.number
            )
        demonstrations.append(_demonstration(raw.value, path, raw.number))
    if not demonstrations:
        raise DataError("no records (the data set is empty)", file=path)
    return demonstrations


def _demonstration(record: dict[str, Any], path: str, number: int) -> dict[str, Any]:
    if "messages" in record:
        return _from_messages(record["messages"], path, number)
    for name in ("prompt", "completion"):
        if name not in record:
            raise DataError(
                f"missing (expected 'prompt' and 'completion', or 'messages'; found {sorted(record)})",
                file=path,
                record=number,
                field=name,
            )
        value = record[name]
        if not isinstance(value, str):
            raise DataError(f"must be a string, not {type(value).__name__}", file=path, record=number, field=name)
        if name == "completion" and not value.strip():
            raise DataError("is empty", file=path, record=number, field=name)
    return {"prompt": record["prompt"], "completion": record["completion"]}


def _from_messages(messages: Any, path: str, number: int) -> dict[str, Any]:
    if not isinstance(messages, list) or not messages:
        raise DataError("must be a non-empty list of {role, content}", file=path, record=number, field="messages")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"message {turn} needs a string 'content'", file=path, record=number, field="messages")
        if message.get("role") not in ROLES:
            raise DataError(
                f"message {turn} has role {message.get('role')!r}; expected one of {sorted(ROLES)}",
                file=path,
                record=number,
                field="messages",
            )
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(
            "the last message must be the assistant's reply, after at least one other",
            file=path,
            record=number,
            field="messages",
        )
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": clean[:-1], "completion": clean[-1:]}
