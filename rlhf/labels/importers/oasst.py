"""OpenAssistant oasst1/oasst2 exports -> rankings of sibling assistant replies.

Two shapes, as oasst-data (oasst_data/schemas.py) writes them:
- messages (`*.messages.jsonl(.gz)`, the hub's parquet): one message per row, {"message_id", "parent_id", "text",
  "role": "prompter" | "assistant", "rank", "deleted", "lang", "message_tree_id", ...};
- trees (`*.trees.jsonl(.gz)`): one conversation tree per row, {"message_tree_id", "tree_state", "origin",
  "prompt": the root message}, each message holding its answers in "replies" (nested to any depth). A tree is
  read as its messages, depth first (as oasst-data's tree_to_messages does); its messages carry the tree's row
  number, so what is quarantined points to the tree.
`rank` is the message's place among its siblings after the crowd ranked them, 0-based (0 = most preferred), and
null for prompts and for replies that were never ranked; the parquet files give it as a float. The Open-Assistant
backend and `oasst-data --exclude-nulls` write the JSON without null values, so `parent_id` (a root prompt) and
`rank` may be absent: absent reads as null. Siblings are the assistant replies sharing a parent_id; their prompt is
the conversation from the root down to that parent. Ranks are aggregated over several rankers, so there is no
single annotator. Every message is accounted for: a ranking covers its prompt message and its ranked replies;
unranked and deleted replies, reply groups with fewer than 2 ranked, and prompts nobody answered are quarantined.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.data.rankings import dense_ranks, is_finite_number
from rlhf.errors import DataError
from rlhf.labels.importers.base import Skipped, build, each_record, invalid

_ROLES = {"prompter": "user", "assistant": "assistant"}


def read_oasst(paths: Sequence[str]) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for oasst message or tree files (JSONL(.gz), parquet,
    `datasets`)."""
    files: dict[str, dict[str, tuple[int, dict]]] = {}  # path -> message_id -> (record number, message)

    def add(path: str, number: int, record: dict):
        messages = files.setdefault(path, {})
        if _is_tree(record):
            return _tree_messages(path, number, record, messages)
        if str(record["message_id"]) in messages:
            return _id_taken(path, number, str(record["message_id"]), messages)
        messages[str(record["message_id"])] = (number, record)
        return ()

    what = "an oasst message or tree file"
    return each_record(paths, what, _problem_with, add, end=lambda path: _rankings(path, files.pop(path, {})))


def _is_tree(record: dict) -> bool:
    return "message_tree_id" in record and "message_id" not in record


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "records are not JSON objects"
    if _is_tree(record):
        return (
            None
            if isinstance(record.get("prompt"), dict) or record.get("prompt") is None
            else "tree 'prompt' is not a message object"
        )
    missing = [key for key in ("message_id", "role", "text") if key not in record]
    if missing:
        return f"records lack {', '.join(missing)} (and are not message trees with 'message_tree_id')"
    return None if record["role"] in _ROLES else f"unknown role {record['role']!r}"


def _tree_messages(path: str, number: int, tree: dict, messages: dict) -> Iterator[Skipped]:
    """Put the tree's messages, depth first, into `messages`; a Skipped for a tree or a message that is unusable."""
    if tree.get("prompt") is None:
        yield Skipped(path, number, "message tree without a prompt", raw={"message_tree_id": tree["message_tree_id"]})
        return
    pending = [(tree["prompt"], None)]
    while pending:
        node, parent_id = pending.pop()
        problem = _problem_with(node) if isinstance(node, dict) else "reply is not a message object"
        if problem:
            yield invalid(path, number, problem, {"message_tree_id": tree["message_tree_id"]})
            continue
        message = {key: value for key, value in node.items() if key != "replies"}
        message.setdefault("parent_id", parent_id)
        if str(message["message_id"]) in messages:  # its replies would hang under the other message: left out too
            yield _id_taken(path, number, str(message["message_id"]), messages)
            continue
        messages[str(message["message_id"])] = (number, message)
        pending.extend((reply, message["message_id"]) for reply in reversed(node.get("replies") or []))


def _id_taken(path: str, number: int, message_id: str, messages: dict) -> Skipped:
    """A message whose id an earlier message has: which one the replies answer is unknown, so the later is left out
    (an exact copy never gets here: `records_by_file` quarantines it as a duplicate)."""
    return invalid(
        path,
        number,
        "message_id of an earlier, different message",
        {"message_id": message_id},
        detail=f"message_id {message_id!r} of record {messages[message_id][0]}",
    )


def _rankings(path: str, messages: dict[str, tuple[int, dict]]) -> Iterator:
    replies: dict[str, list[tuple[int, dict]]] = {}
    for number, message in messages.values():
        if message["role"] == "assistant":
            if message.get("parent_id") is None:
                yield invalid(
                    path, number, "assistant message without a parent prompt", {"message_id": message["message_id"]}
                )
            else:
                replies.setdefault(str(message["parent_id"]), []).append((number, message))
    for parent_id, siblings in replies.items():
        yield from _siblings(path, parent_id, siblings, messages)
    for message_id, (number, message) in messages.items():
        if message["role"] == "prompter" and message_id not in replies:
            yield Skipped(path, number, "prompt without assistant replies", raw={"message_id": message_id})


def _has_rank(message: dict) -> bool:
    rank = message.get("rank")
    return rank is not None and rank == rank  # NaN != NaN: pandas writes missing ranks as NaN


def _siblings(path: str, parent_id: str, siblings, messages) -> Iterator:
    kept = []
    for number, message in siblings:
        if message.get("deleted"):
            yield Skipped(path, number, "deleted reply", raw={"message_id": message["message_id"]})
        elif _has_rank(message) and not is_finite_number(message["rank"]):  # Infinity, or not a number at all
            yield invalid(
                path,
                number,
                DataError(f"must be a finite number or null, not {message['rank']!r}", field="rank"),
                {"message_id": message["message_id"]},
            )
        else:
            kept.append((number, message))
    ranked = [(number, message) for number, message in kept if _has_rank(message)]
    first = siblings[0][0]
    parent = [messages[parent_id][0]] if parent_id in messages else []
    if len(ranked) < 2:
        yield Skipped(
            path,
            first,
            "fewer than 2 ranked replies to one prompt",
            raw={"parent_id": parent_id},
            also=tuple(sorted(({number for number, _ in kept} | set(parent)) - {first})),
        )
        return
    for number, message in kept:
        if not _has_rank(message):
            yield Skipped(
                path, number, "reply left out of its siblings' ranking", raw={"message_id": message["message_id"]}
            )
    used = [number for number, _ in ranked] + parent
    try:
        prompt = _conversation_to(parent_id, messages)
    except KeyError as missing:
        yield invalid(
            path,
            first,
            "parent chain broken: an ancestor message is not in the file",
            {"parent_id": parent_id},
            detail=f"missing message_id {missing.args[0]}",
            also=used,
        )
        return
    yield build(
        path,
        first,
        {"parent_id": parent_id},
        also=used,
        id=parent_id,
        prompt=prompt,
        completions=[message["text"] for _, message in ranked],
        ranks=dense_ranks([float(message["rank"]) for _, message in ranked]),
    )


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
