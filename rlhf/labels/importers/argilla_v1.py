"""Argilla v1 FeedbackDataset rows (`format_as("datasets")`, `push_to_huggingface`) -> the REST record form.

argilla v1's HuggingFaceDatasetMixin writes one row per record: each field as a column; each question as a column
holding a list of {"user_id", "value", "status"}, one per user who answered, plus "<question>-suggestion" and
"<question>-suggestion-metadata" columns; "external_id"; "metadata" as a JSON string. A RankingQuestion's value is
a `Sequence({"rank", "value"})`, which `datasets` stores as a dict of lists {"rank": [...], "value": [...]}
(a list of {"value", "rank"} is read too). A RatingQuestion's value is an int. "status" is "submitted", "draft"
or "discarded": the REST path that reads the result keeps only submitted answers.
"""

from __future__ import annotations

from typing import Any

_RECORD_COLUMNS = {"external_id", "metadata", "id", "vectors"}


def is_feedback_row(record: Any) -> bool:
    return isinstance(record, dict) and any(key.endswith("-suggestion-metadata") for key in record)


def rest_form(row: dict, default_id: str) -> dict:
    """The row as a REST record: {"external_id", "fields", "responses": [{"user_id", "status", "values"}]}."""
    questions = [key[: -len("-suggestion-metadata")] for key in row if key.endswith("-suggestion-metadata")]
    hidden = set(questions) | {f"{q}-suggestion" for q in questions} | {f"{q}-suggestion-metadata" for q in questions}
    fields = {key: value for key, value in row.items() if key not in hidden | _RECORD_COLUMNS}
    responses: dict[Any, dict] = {}
    for question in questions:
        for answer in row.get(question) or []:
            if not isinstance(answer, dict):
                continue
            response = responses.setdefault(
                answer.get("user_id"), {"user_id": answer.get("user_id"), "status": answer.get("status"), "values": {}}
            )
            response["values"][question] = {"value": _ranking_items(answer.get("value"))}
    return {
        "id": default_id,
        "external_id": row.get("external_id"),
        "fields": fields,
        "responses": list(responses.values()),
    }


def _ranking_items(value):
    """{"rank": [...], "value": [...]} (how `datasets` stores a list of {"rank", "value"}) -> that list."""
    if isinstance(value, dict) and isinstance(value.get("value"), list) and isinstance(value.get("rank"), list):
        return [{"value": option, "rank": rank} for option, rank in zip(value["value"], value["rank"])]
    return value
