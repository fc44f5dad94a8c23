"""OpenAssistant oasst1/oasst2 message rows -> rankings of sibling assistant replies.

Each row is one message of a conversation tree: {"message_id", "parent_id", "text", "role": "prompter" |
"assistant", "rank", "deleted", "lang", "message_tree_id", ...}. `rank` is the message's place among its siblings
after the crowd ranked them, 0-based (0 = most preferred), and null for prompts and for replies that were never
ranked; the parquet files give it as a float. The Open-Assistant backend and `oasst-data --exclude-nulls` write
the JSON without null values, so `parent_id` (a root prompt) and `rank` may be absent: absent reads as null. Siblings are the assistant replies sharing a parent_id; their
prompt is the conversation from the root down to that parent. Ranks are aggregated over several rankers, so there
is no single annotator.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from rlhf.labels.importers.base import RecordsRead, Skipped, build, invalid, source_records, unparsable
from rlhf.data.rankings import dense_ranks

_ROLES = {"prompter": "user", "assistant": "assistant"}


def read_oasst(paths: Sequence[str]) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for oasst message files (JSONL(.gz), parquet, `datasets`)."""
    for path in map(str, paths):
        records = list(source_records(path, "an oasst message file", _problem_with))
        yield RecordsRead(path, len(records))
        messages: dict[str, tuple[int, dict]] = {}
        replies: dict[str, list[tuple[int, dict]]] = {}
        for raw in records:
            if raw.error:
                yield unparsable(path, raw)
            elif _problem_with(raw.value):
                yield invalid(path, raw.number, _problem_with(raw.value), raw.value)
            else:
                messages[str(raw.value["message_id"])] = (raw.number, raw.value)
                if raw.value["role"] == "assistant" and raw.value.get("parent_id") is not None:
                    replies.setdefault(str(raw.value["parent_id"]), []).append((raw.number, raw.value))
        for parent_id, siblings in replies.items():
            yield from _siblings(path, parent_id, siblings, messages)


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "records are not JSON objects"
    missing = [key for key in ("message_id", "role", "text") if key not in record]
    if missing:
        return f"records lack {', '.join(missing)}"
    return None if record["role"] in _ROLES else f"unknown role {record['role']!r}"


def _has_rank(message: dict) -> bool:
    rank = message.get("rank")
    return rank is not None and rank == rank  # NaN != NaN: pandas writes missing ranks as NaN


def _siblings(path: str, parent_id: str, siblings, messages) -> Iterator:
    kept = []
    for number, message in siblings:
        if message.get("deleted"):
            yield Skipped(path, number, "deleted reply", raw={"message_id": message["message_id"]})
        else:
            kept.append((number, message))
    ranked = [(number, message) for number, message in kept if _has_rank(message)]
    first = siblings[0][0]
    if len(ranked) < 2:
        yield Skipped(path, first, "fewer than 2 ranked replies to one prompt", raw={"parent_id": parent_id})
        return
    for number, message in kept:
        if not _has_rank(message):
            yield Skipped(path, number, "reply left out of its siblings' ranking",
                          raw={"message_id": message["message_id"]})
    try:
        prompt = _conversation_to(parent_id, messages)
    except KeyError as missing:
        yield invalid(path, first, "parent chain broken: an ancestor message is not in the file",
                      {"parent_id": parent_id}, detail=f"missing message_id {missing.args[0]}")
        return
    yield build(path, first, {"parent_id": parent_id}, id=parent_id, prompt=prompt,
                completions=[message["text"] for _, message in ranked],
                ranks=dense_ranks([float(message["rank"]) for _, message in ranked]))


def _conversation_to(message_id: str, messages) -> list[dict[str, str]]:
    """The chat from the tree's root down to `message_id`, oldest first."""
    turns = []
    seen = set()
    while message_id is not None and message_id not in seen:
        seen.add(message_id)
        _, message = messages[message_id]
        turns.append({"role": _ROLES[message["role"]], "content": message["text"]})
        message_id = None if message.get("parent_id") is None else str(message["parent_id"])
    return turns[::-1]
