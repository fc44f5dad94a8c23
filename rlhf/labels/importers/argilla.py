"""Argilla v2 records with a RankingQuestion -> rankings, one per annotator's response.

Three shapes, as Argilla writes them:
- REST API records (GET /api/v1/datasets/{id}/records?include=responses, or a search answer whose items wrap
  each record as {"record": ...}): {"id", "external_id", "fields", "responses": [{"values": {"<question>":
  {"value": [{"value": "<option>", "rank": 1}, ...]}}, "status": "submitted" | "draft" | "discarded",
  "user_id"}]}. The only form that keeps the rank numbers, hence ties; an option with rank null was not ranked.
- SDK `records.to_list(flatten=True)` and `to_datasets()`: fields at the top level, and per question
  "<question>.responses" (one value per user), "<question>.responses.users", "<question>.responses.status".
- SDK `to_list()` / `records.to_json()` (nested): {"id", "fields", "responses": {"<question>": [{"value",
  "user_id"}]}}. No status at all: drafts and discarded responses cannot be told apart, so these are flagged.
In both SDK forms the SDK has already turned the ranking into a bare list of option values in option order (its
`__ranking_from_model_value` drops "rank"; argilla issues #5712 and #5677 see orders that always come back as
["1", "2", "3"]). The list order is not the annotator's ranking, so such a file is refused with a one-line error
that names the exports that keep the ranks; guessing would write noise as preferences. An SDK-shaped file whose
ranking answers still hold {"value", "rank"} items (written from `record.responses` with each answer's rank)
is read, and without a status it is flagged.

Each ranking option must name the record field that holds its text (as `export_argilla` writes them:
options "response-1".."response-K" and fields of the same names), or be mapped with `option_fields`.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from rlhf.labels.importers.base import (RecordsRead, Skipped, build, invalid, option_list, source_records,
                                      unparsable)
from rlhf.errors import DataError

NO_STATUS = "argilla export without response status (drafts not told apart)"
RANKS_LOST = ("ranking answers are bare option lists, an Argilla SDK export (to_list, to_datasets, to_json) that "
              "has dropped the ranks; export the REST records instead (GET /api/v1/datasets/{id}/records"
              "?include=responses) or write each record.responses answer with its rank")


def read_argilla(paths: Sequence[str], *, question: str | None = None, prompt_field: str = "prompt",
                 option_fields=None) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for Argilla record exports (JSON, JSONL, `datasets` dir).

    question: the RankingQuestion's name (found automatically when one question holds rankings).
    prompt_field: the field holding the prompt (a text, or a chat field's list of messages).
    option_fields: "option=field,option=field" when option values are not field names.
    """
    pairs = option_list(option_fields) or []
    if any("=" not in pair for pair in pairs):
        raise DataError("option_fields must read option=field,option=field")
    mapping = dict(pair.split("=", 1) for pair in pairs)
    for path in map(str, paths):
        records = list(source_records(path, "an Argilla records export", _problem_with))
        yield RecordsRead(path, len(records))
        for raw in records:
            if raw.error:
                yield unparsable(path, raw)
                continue
            record = raw.value.get("record", raw.value) if isinstance(raw.value, dict) else raw.value
            try:
                fields = _fields(record, prompt_field)
                responses = list(_responses(record, question))
            except DataError as error:
                yield invalid(path, raw.number, error, record)
                continue
            if not responses:
                yield Skipped(path, raw.number, "record has no responses", raw={"id": record.get("id")})
            for question_name, user, status, value, flags in responses:
                if _ranks_lost(value):
                    raise DataError(RANKS_LOST, file=path, record=raw.number, field=question_name)
                yield _ranking(path, raw.number, record, fields, prompt_field, mapping, user, status, value, flags)


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "records are not JSON objects"
    record = record.get("record", record)
    if isinstance(record.get("responses"), (list, dict)) or any(key.endswith(".responses") for key in record):
        return None
    return "records have no 'responses' and no '<question>.responses' keys"


def _fields(record: dict, prompt_field: str) -> dict:
    fields = record["fields"] if isinstance(record.get("fields"), dict) else record  # flattened: top level
    if prompt_field not in fields:
        raise DataError(f"record has no field '{prompt_field}' (set the prompt_field option)")
    return fields


def _responses(record: dict, question: str | None) -> Iterator[tuple[str | None, str | None, str | None, Any, tuple]]:
    """(question, user, status, value, flags) for each response to the ranking question."""
    responses = record.get("responses")
    if isinstance(responses, list):  # REST: one response per user, all questions inside "values"
        for response in responses:
            values = response.get("values") or {}
            name = question or _ranking_question(values, lambda v: v.get("value") if isinstance(v, dict) else None)
            value = (values.get(name) or {}).get("value") if name else None
            yield name, _user(response.get("user_id")), response.get("status"), value, ()
    elif isinstance(responses, dict):  # SDK nested: {question: [{"value", "user_id", maybe "status"}]}
        name = question or _ranking_question(responses, lambda answers: answers[0].get("value") if answers else None)
        for answer in responses.get(name) or []:
            status = answer.get("status")
            yield name, _user(answer.get("user_id")), status or "submitted", answer.get("value"), _no_status(status)
    else:  # SDK flattened: "<question>.responses", ".users", ".status"
        names = [key[: -len(".responses")] for key in record if key.endswith(".responses")]
        name = question or _ranking_question({n: record[f"{n}.responses"] for n in names},
                                             lambda values: (values or [None])[0])
        values = record.get(f"{name}.responses") or []
        users = record.get(f"{name}.responses.users") or [None] * len(values)
        statuses = record.get(f"{name}.responses.status")
        for index, value in enumerate(values):
            status = statuses[index] if statuses else None
            user = _user(users[index] if index < len(users) else None)
            yield name, user, status or "submitted", value, _no_status(status)


def _ranking_question(by_name: dict, first_value) -> str | None:
    """The one question whose answers look like rankings: lists of option values or of {value, rank}."""
    names = [name for name, answers in by_name.items() if _looks_like_ranking(first_value(answers))]
    if len(names) > 1:
        raise DataError(f"several questions hold rankings ({', '.join(names)}): set the question option")
    return names[0] if names else None


def _looks_like_ranking(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(item, str) or (isinstance(item, dict) and "value" in item) for item in value))


def _ranks_lost(value) -> bool:
    return isinstance(value, list) and any(isinstance(item, str) for item in value)


def _no_status(status) -> tuple[str, ...]:
    return () if status else (NO_STATUS,)


def _user(user_id) -> str | None:
    return None if user_id in (None, "", "None") else str(user_id)


def _ranking(path, number, record, fields, prompt_field, mapping, user, status, value, flags):
    raw = {"id": record.get("id"), "user_id": user, "status": status, "value": value}
    if status == "draft":
        return Skipped(path, number, "draft response, never submitted", raw=raw)
    if status == "discarded":
        return Skipped(path, number, "discarded response", raw=raw)
    if value is None:
        return Skipped(path, number, "response without a ranking", raw=raw)
    if not _looks_like_ranking(value):
        return invalid(path, number, "ranking value is not a list of options", raw)
    completions, ranks = [], []
    for item in value:
        option, rank = item.get("value"), item.get("rank")
        if rank is None:
            continue  # REST: an option the annotator did not rank
        field = mapping.get(option, option)
        if field not in fields:
            return invalid(path, number, "ranking option names no field (set option_fields)", raw,
                           detail=f"option {option!r}")
        completions.append(fields[field])
        ranks.append(rank)
    ranking_id = str(record.get("external_id") or record.get("id"))
    return build(path, number, raw, flags, id=f"{ranking_id}:{user}" if user else ranking_id,
                 prompt=fields[prompt_field], completions=completions, ranks=ranks, annotator=user)
