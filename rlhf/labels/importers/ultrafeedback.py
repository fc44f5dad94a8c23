"""openbmb/UltraFeedback rows -> rankings of each instruction's completions by rating.

A row is {"source", "instruction", "models", "completions": [{"model", "principle", "response", "annotations":
{"instruction_following", "honesty", "truthfulness", "helpfulness"}, "critique", "overall_score",
"fine-grained_score"}], "correct_answers", "incorrect_answers"}. Each aspect holds {"Rating": "4", "Rationale":
...} (truthfulness and helpfulness add "Type" and "Rationale For Rating"); the raw annotation output holds a list of
such objects per aspect instead. Ratings are strings, and "N/A" where GPT-4 gave none. `overall_score` is the
critique's 1-10 score, which the authors re-scored in Dec 2023 after a bug (their issue #8) turned 1s into 10s.

score="mean_aspects" (default): the mean of the aspect ratings present, as ultrafeedback_binarized moved to after
that bug; "overall_score" or "fine-grained_score": that field; an aspect name: that aspect's rating. Higher is
better; equal scores tie. A completion with no usable score, or with an empty response (some models answered
nothing), is left out of its ranking (counted and flagged); the row's other completions are still ranked. A rating
that is NaN or infinite (NaN in JSON, "nan", "inf", "-inf") quarantines the row, naming the field: it has no place.
The ratings come from GPT-4, not people: there is no annotator.

The binarized form (HuggingFaceH4/ultrafeedback_binarized, splits train_prefs/test_prefs/...) is one pair per
row: {"prompt", "prompt_id", "chosen": [user turn, assistant turn], "rejected": [same user turn, other
assistant turn], "messages", "score_chosen", "score_rejected"}. The shared turns become the chat prompt; a row
whose two scores are equal holds no preference (its "chosen" was picked among equals) and is skipped, counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.data.rankings import ranking_from_record, ranks_from_scores
from rlhf.errors import DataError
from rlhf.labels.importers.base import Imported, Skipped, build, each_record, invalid

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
UNRATED = "completion without a usable rating left out"
EMPTY = "empty completion left out"


def read_ultrafeedback(paths: Sequence[str], *, score: str = "mean_aspects") -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for UltraFeedback files (JSONL, JSON, parquet, `datasets`)."""
    if score not in ("mean_aspects", "overall_score", "fine-grained_score") + ASPECTS:
        raise DataError(f"unknown score {score!r}: use mean_aspects, overall_score, fine-grained_score or an aspect")
    return each_record(
        paths, "an UltraFeedback file", _problem_with, lambda path, number, row: _row(path, number, row, score)
    )


def _problem_with(record: Any) -> str | None:
    if isinstance(record, dict) and {"prompt", "chosen", "rejected"} <= set(record):
        return None  # binarized
    if not isinstance(record, dict) or "instruction" not in record or not isinstance(record.get("completions"), list):
        return (
            "records lack 'instruction' and a 'completions' list, and are not binarized rows ('prompt', "
            "'chosen', 'rejected')"
        )
    return None


def _binarized(path: str, number: int, row: dict):
    try:
        chosen, rejected = (_rating_of(row.get(field), field) for field in ("score_chosen", "score_rejected"))
    except DataError as error:
        return invalid(path, number, error, row)
    if chosen is not None and chosen == rejected:
        return Skipped(path, number, "chosen and rejected scored equal: no preference", raw=row)
    pair = {
        "id": f"{path.rsplit('/', 1)[-1]}:{number}",
        "prompt": row["prompt"],
        "chosen": row["chosen"],
        "rejected": row["rejected"],
    }
    try:
        return Imported(ranking_from_record(pair), path, number)
    except DataError as error:
        return invalid(path, number, error, row)


def rating(value) -> float | None:
    """ "4" -> 4.0, 4 -> 4.0, "N/A" / "" / None -> None; a list of per-pass ratings -> their mean. A rating that
    reads as NaN or infinite (NaN in JSON, "nan", "inf", "-inf") is a DataError: there is no place to rank it at."""
    if isinstance(value, list):
        ratings = [r for r in (rating(item) for item in value) if r is not None]
        return sum(ratings) / len(ratings) if ratings else None
    if isinstance(value, dict):
        return rating(value.get("Rating"))
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        raise DataError(f"must be a finite number, not {value!r}")
    return number


def _rating_of(value, field: str) -> float | None:
    """`rating(value)`, its DataError naming `field`."""
    try:
        return rating(value)
    except DataError as error:
        raise DataError(error.reason, field=field) from None


def completion_score(completion: dict, score: str) -> float | None:
    annotations = completion.get("annotations") or {}
    if score in ASPECTS:
        return _rating_of(annotations.get(score), f"annotations.{score}")
    if score == "mean_aspects":
        ratings = [
            r
            for r in (_rating_of(annotations.get(aspect), f"annotations.{aspect}") for aspect in ASPECTS)
            if r is not None
        ]
        return sum(ratings) / len(ratings) if ratings else None
    return _rating_of(completion.get(score), score)


def _row(path: str, number: int, row: dict, score: str):
    if "chosen" in row:
        return _binarized(path, number, row)
    texts, scores = [], []
    unrated = empty = 0
    for place, completion in enumerate(row["completions"], start=1):
        try:
            value = completion_score(completion, score) if isinstance(completion, dict) else None
        except DataError as error:
            return invalid(
                path,
                number,
                DataError(error.reason, field=f"completions.{error.field}"),
                row,
                detail=f"completion {place}",
            )
        if value is None:
            unrated += 1
        elif isinstance(completion.get("response"), str) and not completion["response"].strip():
            empty += 1
        else:
            texts.append(completion.get("response"))
            scores.append(value)
    if len(scores) < 2:
        return Skipped(path, number, "fewer than 2 rated completions", raw=row)
    if len(set(scores)) < 2:
        return Skipped(path, number, "all completions rated equal", raw=row)
    try:  # a mean of finite ratings can still overflow to infinity ("1e308" twice)
        ranks = ranks_from_scores(scores, f"completions.{score}")
    except DataError as error:
        return invalid(path, number, error, row)
    flags = ((UNRATED,) if unrated else ()) + ((EMPTY,) if empty else ())
    return build(
        path,
        number,
        row,
        flags,
        id=f"{path.rsplit('/', 1)[-1]}:{number}",
        prompt=row["instruction"],
        completions=texts,
        ranks=ranks,
    )
