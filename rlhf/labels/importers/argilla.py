"""Argilla records with a RankingQuestion, or a RatingQuestion per response -> rankings, one per annotator's response.

Four shapes, as Argilla writes them:
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

- v1 FeedbackDataset rows (`format_as("datasets")`, `push_to_huggingface`): a column per question holding
  [{"user_id", "value", "status"}]; read through the REST form (see `argilla_v1`), so drafts and discarded
  answers are skipped as there.

A RatingQuestion per response ("rating-1" rates field "response-1", ...) is read with the `rating_fields` option,
"question=field,...": each response's ratings make one ranking, a higher rating better, equal ratings tied; a
response field left unrated is left out and the ranking flagged. Which question rates which field is not in the
export, so it is never guessed.

Each ranking option must name the record field that holds its text (as `export_argilla` writes them:
options "response-1".."response-K" and fields of the same names), or be mapped with `option_fields`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.data.rankings import is_finite_number, ranks_from_scores
from rlhf.errors import DataError
from rlhf.labels.importers.argilla_v1 import is_feedback_row, rest_form
from rlhf.labels.importers.base import Skipped, build, each_record, invalid, option_list

NO_STATUS = "argilla export without response status (drafts not told apart)"
UNRATED_FIELDS = "response fields without a rating: left out"
RATINGS_UNMAPPED = (
    "response has RatingQuestion answers but no ranking: map each rating question to the field it "
    "rates with --option rating_fields=question=field,..."
)
RANKS_LOST = (
    "ranking answers are bare option lists, an Argilla SDK export (to_list, to_datasets, to_json) that "
    "has dropped the ranks; export the REST records instead (GET /api/v1/datasets/{id}/records"
    "?include=responses) or write each record.responses answer with its rank"
)


def read_argilla(
    paths: Sequence[str],
    *,
    question: str | None = None,
    prompt_field: str = "prompt",
    option_fields=None,
    rating_fields=None,
) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for Argilla record exports (JSON, JSONL, `datasets` dir).

    question: the RankingQuestion's name (found automatically when one question holds rankings).
    prompt_field: the field holding the prompt (a text, or a chat field's list of messages).
    option_fields: "option=field,option=field" when option values are not field names.
    rating_fields: "question=field,question=field": read these RatingQuestions, one per response field, instead
    of a RankingQuestion.
    """
    mapping = _pairs(option_fields, "option_fields")
    ratings = _pairs(rating_fields, "rating_fields")
    yield from each_record(
        paths,
        "an Argilla records export",
        _problem_with,
        lambda path, number, record: _record(path, number, record, question, prompt_field, mapping, ratings),
        check_each=False,
    )


def _record(path, number, record, question, prompt_field, mapping, ratings) -> Iterator:
    """A ranking, or a Skipped, per annotator's response to the record."""
    record = record.get("record", record) if isinstance(record, dict) else record
    if is_feedback_row(record):
        record = rest_form(record, default_id=f"{path.rsplit('/', 1)[-1]}:{number}")
    try:
        fields = _fields(record, prompt_field)
        answers = list(_answers(record))
        name = None if ratings else question or _ranking_question(answers)
    except DataError as error:
        yield invalid(path, number, error, record)
        return
    if not answers:
        yield Skipped(path, number, "record has no responses", raw={"id": record.get("id")})
    for user, status, values, flags in answers:
        if ratings:
            try:
                value, unrated = _ratings_as_ranking(values, ratings)
            except DataError as error:
                yield invalid(path, number, error, {"id": record.get("id"), "user_id": user})
                continue
            flags += (UNRATED_FIELDS,) if unrated and value else ()
        else:
            value = values.get(name) if name else None
        if _ranks_lost(value):
            raise DataError(RANKS_LOST, file=path, record=number, field=name)
        if value is None and not ratings and any(_is_rating(v) for v in values.values()):
            yield Skipped(path, number, RATINGS_UNMAPPED, raw={"id": record.get("id"), "user_id": user})
            continue
        yield _ranking(path, number, record, fields, prompt_field, mapping, user, status, value, flags)


def _pairs(option: str | None, name: str) -> dict[str, str]:
    pairs = option_list(option) or []
    if any("=" not in pair for pair in pairs):
        raise DataError(f"{name} must read key=field,key=field")
    return dict(pair.split("=", 1) for pair in pairs)


def _is_rating(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ratings_as_ranking(values: dict, ratings: dict[str, str]) -> tuple[list[dict] | None, bool]:
    """A response's ratings as ranking items [{"value": field, "rank": place}], and whether a field went unrated;
    a DataError naming the question whose rating is NaN or infinite."""
    for question in ratings:
        if _is_rating(values.get(question)) and not is_finite_number(values[question]):  # NaN, Infinity
            raise DataError(f"rating must be a finite number, not {values[question]}", field=question)
    rated = [(field, values[question]) for question, field in ratings.items() if _is_rating(values.get(question))]
    if not rated:
        return None, False
    places = ranks_from_scores([rating for _, rating in rated], "rating")
    return [{"value": field, "rank": place} for (field, _), place in zip(rated, places)], len(rated) < len(ratings)


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "records are not JSON objects"
    record = record.get("record", record)
    if isinstance(record.get("responses"), (list, dict)) or any(key.endswith(".responses") for key in record):
        return None
    if is_feedback_row(record):
        return None
    return (
        "records have no 'responses', no '<question>.responses' keys and no v1 '<question>-suggestion-metadata' columns"
    )


def _fields(record: dict, prompt_field: str) -> dict:
    fields = record["fields"] if isinstance(record.get("fields"), dict) else record  # flattened: top level
    if prompt_field not in fields:
        raise DataError(f"record has no field '{prompt_field}' (set the prompt_field option)")
    return fields


def _answers(record: dict) -> Iterator[tuple[str | None, str | None, dict[str, Any], tuple]]:
    """(user, status, {question: value}, flags) for each user's response to the record."""
    responses = record.get("responses")
    if isinstance(responses, list):  # REST: one response per user, all questions inside "values"
        for response in responses:
            values = {
                name: answer.get("value") if isinstance(answer, dict) else None
                for name, answer in (response.get("values") or {}).items()
            }
            yield _user(response.get("user_id")), response.get("status"), values, ()
        return
    if isinstance(responses, dict):  # SDK nested: {question: [{"value", "user_id", maybe "status"}]}
        answers = [
            (name, answer.get("user_id"), index, answer.get("status"), answer.get("value"))
            for name, listed in responses.items()
            for index, answer in enumerate(listed or [])
            if isinstance(answer, dict)
        ]
    else:  # SDK flattened: "<question>.responses", ".users", ".status", aligned by position
        answers = []
        for name in [key[: -len(".responses")] for key in record if key.endswith(".responses")]:
            users = record.get(f"{name}.responses.users") or []
            statuses = record.get(f"{name}.responses.status") or []
            answers += [
                (name, users[i] if i < len(users) else None, i, statuses[i] if i < len(statuses) else None, value)
                for i, value in enumerate(record.get(f"{name}.responses") or [])
            ]
    by_user: dict[Any, list] = {}  # a user (or, without user ids, a position) -> [user, status, {question: value}]
    for name, user, index, status, value in answers:
        entry = by_user.setdefault(user if user not in (None, "") else ("position", index), [user, status, {}])
        entry[2][name] = value
    for user, status, values in by_user.values():
        yield _user(user), status or "submitted", values, _no_status(status)


def _ranking_question(answers: list) -> str | None:
    """The one question whose answers look like rankings: lists of option values or of {value, rank}."""
    names = list(
        dict.fromkeys(
            name for _, _, values, _ in answers for name, value in values.items() if _looks_like_ranking(value)
        )
    )
    if len(names) > 1:
        raise DataError(f"several questions hold rankings ({', '.join(names)}): set the question option")
    return names[0] if names else None


def _looks_like_ranking(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, str) or (isinstance(item, dict) and "value" in item) for item in value)
    )


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
            return invalid(
                path, number, "ranking option names no field (set option_fields)", raw, detail=f"option {option!r}"
            )
        completions.append(fields[field])
        ranks.append(rank)
    ranking_id = str(record.get("external_id") or record.get("id"))
    return build(
        path,
        number,
        raw,
        flags,
        id=f"{ranking_id}:{user}" if user else ranking_id,
        prompt=fields[prompt_field],
        completions=completions,
        ranks=ranks,
        annotator=user,
    )
