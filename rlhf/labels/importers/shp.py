"""Stanford SHP / SHP-2 rows -> rankings where a post's comments are totally ordered, pairs elsewhere.

Each row is one preference between two top-level comments of a post: {"post_id", "domain", "history" (the
post), "c_root_id_A", "c_root_id_B", "human_ref_A", "human_ref_B", "score_A", "score_B", "labels" (1 if A is
preferred, 0 if B), ...}. SHP only keeps a pair when the score ratio is >= 2 and the preferred comment was written
later, so the rows of a post form a partial order, often not a total one. The files are JSON Lines even though
they are named `train.json`.

Per post: if the preferences order all its comments in exactly one way (the directed graph has a unique
topological order, i.e. its transitive closure is total), they become one ranking with K = number of comments;
otherwise each row stays a K = 2 ranking. `total_orders=false` keeps every row a pair. Votes are collective:
there is no annotator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.labels.importers.base import build, each_record, invalid

_FIELDS = ("post_id", "history", "c_root_id_A", "c_root_id_B", "human_ref_A", "human_ref_B", "labels")


def read_shp(paths: Sequence[str], *, total_orders: bool | str = True) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for SHP files (JSONL, parquet or `datasets` dir)."""
    total_orders = str(total_orders).lower() not in ("false", "0", "no")
    posts: dict[str, dict[str, list[tuple[int, dict]]]] = {}  # path -> post_id -> its (record number, row)s

    def add(path: str, number: int, row: dict):
        if row["labels"] not in (0, 1):
            return invalid(path, number, "'labels' is not 0 or 1", row)
        posts.setdefault(path, {}).setdefault(str(row["post_id"]), []).append((number, row))
        return ()

    return each_record(
        paths, "an SHP file", _problem_with, add, end=lambda path: _rankings(path, posts.pop(path, {}), total_orders)
    )


def _rankings(path: str, posts: dict[str, list[tuple[int, dict]]], total_orders: bool) -> Iterator:
    """Per post, one ranking of its comments when its rows order them totally, else each row as a pair."""
    for post_id, rows in posts.items():
        order = _total_order(rows) if total_orders else None
        if order is None:
            yield from (_pair(path, number, row) for number, row in rows)
        else:
            texts = _comment_texts(rows)
            yield build(
                path,
                rows[0][0],
                [row for _, row in rows],
                also=[number for number, _ in rows],
                id=str(post_id),
                prompt=rows[0][1]["history"],
                completions=[texts[c] for c in order],
                ranks=tuple(range(1, len(order) + 1)),
            )


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "records are not JSON objects"
    missing = [name for name in _FIELDS if name not in record]
    return f"records lack {', '.join(missing)}" if missing else None


def _winner_loser(row: dict) -> tuple[str, str]:
    a, b = str(row["c_root_id_A"]), str(row["c_root_id_B"])
    return (a, b) if row["labels"] == 1 else (b, a)


def _comment_texts(rows) -> dict[str, str]:
    texts = {}
    for _, row in rows:
        texts[str(row["c_root_id_A"])] = row["human_ref_A"]
        texts[str(row["c_root_id_B"])] = row["human_ref_B"]
    return texts


def _total_order(rows) -> list[str] | None:
    """The comments best first, if the preference graph admits exactly one topological order; else None."""
    if len(rows) < 2:
        return None
    comments = list(_comment_texts(rows))
    beaten_by = {comment: set() for comment in comments}
    for _, row in rows:
        winner, loser = _winner_loser(row)
        beaten_by[loser].add(winner)
    order: list[str] = []
    while len(order) < len(comments):
        unbeaten = [c for c in comments if c not in order and not beaten_by[c] - set(order)]
        if len(unbeaten) != 1:  # 0: a cycle; 2+: two comments the rows never order
            return None
        order.append(unbeaten[0])
    return order


def _pair(path: str, number: int, row: dict):
    winner, loser = _winner_loser(row)
    texts = _comment_texts([(number, row)])
    return build(
        path,
        number,
        row,
        id=f"{row['post_id']}:{winner}>{loser}",
        prompt=row["history"],
        completions=(texts[winner], texts[loser]),
        ranks=(1, 2),
    )
