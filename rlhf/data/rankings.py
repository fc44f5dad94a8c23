"""The canonical ranking format that the reward-model stage reads: one JSON object per line.

    {"id": "q17", "prompt": "Explain ..." | [{"role": "user", "content": "..."}, ...],
     "completions": ["...", "...", "..."], "ranks": [2, 1, 2], "annotator": "alice" | null}

`ranks[i]` is the place of `completions[i]`: 1 is best and equal numbers are ties (here completions 0 and 2 tie
behind completion 1). K = len(completions) >= 2 and may differ from line to line; a pairwise comparison
(TRL's prompt/chosen/rejected) is K = 2. Ranks are places from 1 to K and need not be dense: [1, 3, 3] (one
best, two tied behind it) is as valid as [1, 2, 2]. Batched tensors pad ranks with 0, which `ordered_pairs`
skips. Each line is one annotator's judgement; `merge_annotators` is the opt-in way to average several
annotators' rankings of the same completions (InstructGPT §3.5 keeps them apart).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from rlhf.data.records import read_records
from rlhf.errors import DataError
from rlhf.io import write_jsonl_atomically

Prompt = str | list
REQUIRED_FIELDS = ("id", "prompt", "completions", "ranks")


@dataclass(frozen=True)
class Ranking:
    """One annotator's ranking of K >= 2 completions of one prompt. Built only valid: see `check_ranking`."""

    id: str
    prompt: Prompt
    completions: tuple[str, ...]
    ranks: tuple[int, ...]
    annotator: str | None = None

    def __post_init__(self):
        check_ranking(self.id, self.prompt, self.completions, self.ranks, self.annotator)
        object.__setattr__(self, "completions", tuple(self.completions))
        object.__setattr__(self, "ranks", tuple(int(rank) for rank in self.ranks))  # 2.0 (pandas) -> 2

    __hash__ = None  # the prompt may be a list of messages

    @property
    def k(self) -> int:
        return len(self.completions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "completions": list(self.completions),
            "ranks": list(self.ranks),
            "annotator": self.annotator,
        }


def check_ranking(id, prompt, completions, ranks, annotator=None) -> None:
    """Raise DataError(reason, field=...) unless the fields make a ranking with at least one preference pair."""
    if not isinstance(id, str) or not id:
        raise DataError("must be a non-empty string", field="id")
    if not is_prompt(prompt):
        raise DataError("must be a non-empty string or a list of chat messages {role, content}", field="prompt")
    if not isinstance(completions, (list, tuple)) or not all(isinstance(text, str) for text in completions):
        raise DataError("must be a list of strings", field="completions")
    if len(completions) < 2:
        raise DataError("needs at least 2 completions (K >= 2)", field="completions")
    empty = [number for number, text in enumerate(completions, start=1) if not text.strip()]
    if empty:
        raise DataError(f"completion {empty[0]} of {len(completions)} is empty", field="completions")
    if not _is_utf8(prompt):
        raise DataError("holds a lone surrogate (text that is not Unicode, cannot be written as UTF-8)", field="prompt")
    if not _is_utf8(list(completions)):
        raise DataError(
            "holds a lone surrogate (text that is not Unicode, cannot be written as UTF-8)", field="completions"
        )
    if not isinstance(ranks, (list, tuple)) or not all(_is_int(rank) for rank in ranks):
        raise DataError("must be integers", field="ranks")
    if len(ranks) != len(completions):
        raise DataError(f"has {len(ranks)} entries for {len(completions)} completions", field="ranks")
    # A rank is a place among the K completions (tied ones share it), so it is never above K: a value such
    # as 10**30 is a broken export, not a ranking.
    if any(not 1 <= rank <= len(ranks) for rank in ranks):
        shown = ", ".join(_shown(rank) for rank in ranks)
        raise DataError(f"must be places from 1 (best) to {len(ranks)}, got {shown}", field="ranks")
    if len(set(ranks)) < 2:
        raise DataError("all completions are tied: no preference pair", field="ranks")
    if annotator is not None and not isinstance(annotator, str):
        raise DataError("must be a string or null", field="annotator")


def _is_int(value) -> bool:
    """An int, or a float holding a whole number (ranks come back as 1.0, 2.0 from a pandas round trip); NaN and
    ±Infinity, which json.loads reads, are no whole numbers."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(rank) -> str:
    text = str(int(rank))
    return text if len(text) <= 12 else f"{text[:3]}...({len(text)} digits)"


def _is_utf8(value) -> bool:
    """False when a string holds a lone surrogate (JSON's "\\ud800" escape decodes to one)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_prompt(prompt) -> bool:
    """Text with something in it besides whitespace, or a non-empty list of chat messages {role, content}."""
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return isinstance(prompt, list) and bool(prompt) and all(_is_message(message) for message in prompt)


def _is_message(message) -> bool:
    return (
        isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)
    )


# -- reading and writing ------------------------------------------------------------------------------------------


def ranking_from_record(record: Any, default_id: str | None = None) -> Ranking:
    """Our JSON object, or a TRL preference row (prompt/chosen/rejected, standard or conversational)."""
    if not isinstance(record, dict):
        raise DataError("must be a JSON object")
    if "completions" in record or "ranks" in record:
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise DataError("is missing", field=missing[0])
        return Ranking(record["id"], record["prompt"], record["completions"], record["ranks"], record.get("annotator"))
    if "chosen" in record and "rejected" in record:
        return _ranking_from_trl_pair(record, default_id)
    raise DataError("is neither a ranking (id, prompt, completions, ranks) nor a TRL pair (prompt, chosen, rejected)")


def _ranking_from_trl_pair(record: dict, default_id: str | None) -> Ranking:
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if prompt is None:
        # TRL's implicit-prompt conversational form: both conversations share the prompt turns.
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise DataError(
                "is missing (text pairs with the prompt inside chosen/rejected: use --format hh_rlhf)", field="prompt"
            )
        prompt, chosen, rejected = split_shared_messages(chosen, rejected)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        # Full conversations that repeat the prompt (HuggingFaceH4/ultrafeedback_binarized: "prompt" is the user
        # turn that both "chosen" and "rejected" begin with): keep the shared turns as the prompt.
        shared, chosen_tail, rejected_tail = split_shared_messages(chosen, rejected)
        if shared and _repeats_prompt(shared, prompt):
            prompt, chosen, rejected = shared, chosen_tail, rejected_tail
    texts = _completion_text(chosen, "chosen"), _completion_text(rejected, "rejected")
    for name, text in zip(("chosen (preferred)", "rejected"), texts):
        if not text.strip():
            raise DataError(f"the {name} reply is empty", field=name.split()[0])
    ranking_id = record.get("id", default_id)
    return Ranking(str(ranking_id) if ranking_id is not None else "", prompt, texts, (1, 2), record.get("annotator"))


def _repeats_prompt(shared: list, prompt) -> bool:
    if isinstance(prompt, str):
        return _is_message(shared[-1]) and shared[-1]["role"] == "user" and shared[-1]["content"] == prompt
    return shared == prompt


def split_shared_messages(first: list, second: list) -> tuple[list, list, list]:
    """Split two conversations into the turns they share and the turns that differ."""
    shared = 0
    while shared < min(len(first), len(second)) and first[shared] == second[shared]:
        shared += 1
    return first[:shared], first[shared:], second[shared:]


def _completion_text(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and _is_message(value[0]) and value[0]["role"] == "assistant":
        return value[0]["content"]
    raise DataError("must be a string or a single assistant message", field=field)


def iter_rankings(path: str | os.PathLike) -> Iterator[Ranking]:
    """Yield the rankings of our JSONL, a TRL preference JSONL, or a `datasets` directory of either; strict."""
    source = str(path)
    for raw in read_records(path):
        if raw.error:
            raise DataError(raw.problem, file=source, record=raw.number)
        try:
            yield ranking_from_record(raw.value, default_id=f"{Path(source).name}:{raw.number}")
        except DataError as error:
            raise DataError(error.reason, file=source, record=raw.number, field=error.field) from None


def read_rankings(path: str | os.PathLike) -> list[Ranking]:
    """All rankings of `path`; the first bad record is a DataError naming file, record and field."""
    return list(iter_rankings(path))


def write_rankings(path: str | os.PathLike, rankings: Iterable[Ranking]) -> int:
    """Write rankings as JSONL through a temporary file and os.replace; return how many were written."""
    return write_jsonl_atomically(path, (ranking.to_dict() for ranking in rankings))


# -- rank arithmetic ----------------------------------------------------------------------------------------------


def dense_ranks(places: Sequence) -> tuple[int, ...]:
    """Renumber places (smaller = better) as 1, 2, 3, ... keeping ties: (1, 4, 4, 9) -> (1, 2, 2, 3)."""
    order = {place: number for number, place in enumerate(sorted(set(places)), start=1)}
    return tuple(order[place] for place in places)


def ranks_from_scores(scores: Sequence, field: str = "scores") -> tuple[int, ...]:
    """Dense ranks from scores where higher is better; equal scores tie: (7.5, 9, 7.5) -> (2, 1, 2).

    A score that is not a finite number is a DataError naming `field`: NaN compares false with everything, so it
    would take any place ((3, nan, 1) gave (2, 1, 3)), and an infinite rating is a broken export, not a judgement.
    json.loads reads NaN and Infinity, and float() reads "inf" and "nan", so such scores do reach here.
    """
    for score in scores:
        if not is_finite_number(score):
            raise DataError(f"must be a finite number, not {score!r}", field=field)
    return dense_ranks([-score for score in scores])


def is_finite_number(value) -> bool:
    """A real number (int, float, numpy's) that is neither NaN nor infinite; a bool is not a number here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def ordered_pairs(ranks: Sequence) -> list[tuple[int, int]]:
    """(better_index, worse_index) for every pair that the ranks order; ties and rank 0 (padding) give no pair.

    Ranks may be a list, a tuple, or a row of a tensor (each element goes through int()).
    """
    places = [int(rank) for rank in ranks]
    return [
        (better, worse)
        for better, better_place in enumerate(places)
        if better_place > 0
        for worse, worse_place in enumerate(places)
        if better_place < worse_place
    ]


def merge_duplicate_completions(ranking: Ranking) -> Ranking:
    """Merge identical completion texts of one ranking, keeping the best rank, then re-densify the ranks.

    Raises DataError when fewer than two distinct completions, or no preference pair, remain.
    """
    best: dict[str, int] = {}
    for text, rank in zip(ranking.completions, ranking.ranks):
        best[text] = min(rank, best.get(text, rank))
    if len(best) == len(ranking.completions):
        return ranking
    if len(best) < 2:
        raise DataError("all completions are identical", field="completions")
    return replace(ranking, completions=tuple(best), ranks=dense_ranks(list(best.values())))


def merge_annotators(rankings: Iterable[Ranking]) -> tuple[list[Ranking], list[list[Ranking]]]:
    """Merge rankings of the same prompt and the same set of completions into one, by mean (dense) rank.

    Equal means tie. Returns (rankings, cancelled): groups whose means all tie carry no preference and come back
    in `cancelled` rather than vanish. A merged ranking keeps the first id and joins the annotators with "+".
    Rankings that share their prompt and completions with no other come back unchanged, in input order.
    """
    groups: dict[tuple, list[Ranking]] = {}
    for ranking in rankings:
        ranking = merge_duplicate_completions(ranking)
        key = (json.dumps(ranking.prompt, sort_keys=True, ensure_ascii=False), frozenset(ranking.completions))
        groups.setdefault(key, []).append(ranking)
    merged, cancelled = [], []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        first = group[0]
        means = []
        for text in first.completions:
            places = [dict(zip(r.completions, dense_ranks(r.ranks)))[text] for r in group]
            means.append(Fraction(sum(places), len(places)))
        if len(set(means)) < 2:
            cancelled.append(group)
            continue
        annotators = sorted({r.annotator for r in group if r.annotator is not None})
        merged.append(replace(first, ranks=dense_ranks(means), annotator="+".join(annotators) or None))
    return merged, cancelled
