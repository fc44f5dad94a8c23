"""Label Studio exports (JSON, JSON-MIN, CSV) with <Pairwise> or <Ranker> results -> rankings.

The shapes, as Label Studio writes them (label-studio-sdk converter; editor tags Pairwise.js and Ranker.js):
- JSON: a list of tasks {"id", "data", "annotations": [{"id", "completed_by", "result", "was_cancelled"}],
  "drafts", "predictions"}. Old exports say "completions" for annotations. `completed_by` is a user id, or a
  {"id", "email", ...} object in newer versions. Predictions are a model's, not a person's: not imported.
- JSON-MIN: one flat object per (task, annotation): the task data, "id", one key per control tag holding the
  list of its result values ("comparison": [{"selected": "left"}]), "annotator", "annotation_id", timestamps.
  Label Studio has already dropped cancelled annotations here; unannotated tasks come with no result key.
- CSV: the JSON-MIN columns in sorted order, lists and objects (results and list data) as JSON strings. Only
  cells that decode to a control tag's results or to a <List>'s {id, ...} items are decoded: a prompt such as
  "[1, 2, 3]" stays the text it is.
- <Pairwise>: value {"selected": "left" | "right"}. Its to_name is the tag's own name, not the two texts, so the
  texts are found in the task data: answer1/answer2 ("Human preference collection for RLHF" template),
  text1/text2 ("Pairwise Classification"), or the `pair_fields` option.
- <Ranker> over a <List> of {"id", "title", "body"} items: value {"ranker": {"<ranker name>": [ids, best first]}};
  older versions wrote the bare list {"ranker": [ids]}. With <Bucket>s the object maps bucket names to ids and
  "_" holds items left in the list (labelstud.io/tags/ranker). Buckets become tie groups, best first in the order
  of the <Bucket> tags inside that <Ranker> in the labeling config (the `config` option: the XML file; our
  exporter writes it beside the tasks), or of the `bucket_order` option. Never in the result's key order: Label
  Studio keeps results in a JSON field, jsonb on PostgreSQL, which reorders keys shortest first, so without a
  config or bucket_order bucket results are refused. Items left in "_" were not judged: left out, counted and
  flagged. Submitting an untouched ranker stores the shown order: kept, but flagged.
- <Rating> on each response (value {"rating": n}, to_name the response's object tag): all of an annotation's
  ratings make one ranking, higher rating better, equal ratings tied (see `label_studio_ratings`).
- <Choices> A/B/tie (value {"choices": ["A"]}): a pairwise preference over the pair fields; the
  `preference_choices` option names the left, right and tie choices ("A,B,Tie" unless set).
- JSON-MIN and CSV keep only a control's name and its values: a Rating there needs the config to find its
  response, and a single Choice is a bare string that only the config tells apart from task data.
- The old converter (label-studio-converter) wrote list and object cells of its CSV with pandas, that is as Python
  repr ("[{'selected': 'left'}]"); such cells are read with ast.literal_eval (a literal parser, never eval).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf import bounded_json
from rlhf.errors import DataError
from rlhf.labels.importers.base import Imported, Skipped, build, each_record, invalid, option_list
from rlhf.labels.importers.label_studio_config import LabelingConfig, read_labeling_config
from rlhf.labels.importers.label_studio_ratings import from_choices, from_ratings, preference_choice_map

UNTOUCHED = "untouched ranker: result equals the shown order"
UNRANKED = "ranker items left in the list ('_'), not judged: left out"


NO_RESULT_COLUMN = (
    "no result column (a single Choice is a bare value in JSON-MIN and CSV: pass the labeling "
    "config with --option config=CONFIG.xml)"
)


class BucketOrderUnknown(DataError):
    """Bucket results without a labeling config: any order taken would be a guess, so the whole import stops."""


KNOWN_PAIR_FIELDS = (("answer1", "answer2"), ("text1", "text2"), ("response1", "response2"))
_MIN_EXPORT_KEYS = {
    "id",
    "annotator",
    "annotation_id",
    "created_at",
    "updated_at",
    "lead_time",
    "agreement",
    "history",
    "was_cancelled",
}


@dataclass(frozen=True)
class _Options:
    prompt_field: str
    pair_fields: list[str] | None
    list_field: str | None
    bucket_order: list[str] | None
    labeling: LabelingConfig
    config: str | None
    choices: dict[str, str]  # a <Choice> value, casefolded -> "left" | "right" | "tie"


def read_label_studio(
    paths: Sequence[str],
    *,
    prompt_field: str = "prompt",
    pair_fields=None,
    list_field: str | None = None,
    bucket_order=None,
    config: str | None = None,
    preference_choices=None,
) -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for Label Studio export files.

    prompt_field: the task data key that holds the prompt. pair_fields: "left,right" data keys a Pairwise
    compared (found automatically for the stock templates). list_field: the data key of the List items (found
    automatically). config: the project's labeling config XML, whose <Bucket> tags give the bucket order, best
    first. bucket_order: "best,ok,bad" bucket names, best first, for every Ranker (overrides the config).
    preference_choices: "left,right[,tie]" <Choice> values of an A/B/tie <Choices> (default "A,B,Tie").
    """
    options = _Options(
        prompt_field,
        option_list(pair_fields),
        list_field,
        option_list(bucket_order),
        read_labeling_config(config) if config else LabelingConfig(),
        config,
        preference_choice_map(option_list(preference_choices)),
    )
    if options.pair_fields is not None and len(options.pair_fields) != 2:
        raise DataError("pair_fields must name two task data keys: left,right")
    yield from each_record(
        paths,
        "a Label Studio export",
        _problem_with,
        lambda path, number, record: _record(path, number, record, options),
        check_each=False,
    )


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "records are not JSON objects"
    if "data" in record and ("annotations" in record or "completions" in record):
        return None
    if "annotation_id" in record:
        return None
    return "records have neither 'data' and 'annotations' (JSON export) nor 'annotation_id' (JSON-MIN, CSV)"


def _record(path: str, number: int, record: dict, options: _Options) -> Iterator[Imported | Skipped]:
    if "data" in record and ("annotations" in record or "completions" in record):
        return _full_task(path, number, record, options)
    return _flat_row(path, number, record, options, path.lower().endswith((".csv", ".tsv")))


def _full_task(path: str, number: int, task: dict, options: _Options) -> Iterator[Imported | Skipped]:
    data = task.get("data")
    if not isinstance(data, dict):
        yield invalid(path, number, "task has no 'data' object", task)
        return
    annotations = task.get("annotations") or task.get("completions") or []
    drafts = task.get("drafts") or []
    for draft in drafts:
        yield Skipped(path, number, "draft, never submitted", raw={"task": task.get("id"), "draft": draft})
    if not annotations and not drafts:
        yield Skipped(path, number, "task not annotated", raw={"task": task.get("id")})
    for annotation in annotations:
        where = {"task": task.get("id"), "annotation": annotation}
        if annotation.get("was_cancelled") or annotation.get("skipped"):
            yield Skipped(path, number, "cancelled (skipped) annotation", raw=where)
            continue
        results = [
            {
                "from_name": r.get("from_name"),
                "to_name": r.get("to_name"),
                "type": r.get("type"),
                "value": r.get("value") or {},
            }
            for r in annotation.get("result") or []
            if isinstance(r, dict)
        ]
        yield from _judgements(
            path,
            number,
            data,
            results,
            _annotator(annotation.get("completed_by")),
            f"{task.get('id')}:{annotation.get('id')}",
            where,
            options,
        )


def _flat_row(path: str, number: int, row: dict, options: _Options, from_csv: bool) -> Iterator:
    data, results = {}, []
    for key, value in row.items():
        if key in _MIN_EXPORT_KEYS:
            continue
        if from_csv and isinstance(value, str) and value[:1] in "[{":
            value = _annotation_cell(value)
        if isinstance(value, str) and options.labeling.controls.get(key, ("",))[0] == "choices":
            value = [{"choices": [value]}]  # JSON-MIN writes a single Choice as its bare value
        if _is_result_list(value):
            results.extend({"from_name": key, "to_name": None, "type": None, "value": item} for item in value)
        else:
            data[key] = value
    if row.get("annotation_id") in (None, "") and not results:
        yield Skipped(path, number, "task not annotated", raw={"task": row.get("id")})
        return
    if not results and not options.labeling.controls:
        yield Skipped(path, number, NO_RESULT_COLUMN, raw=row)
        return
    annotator = row.get("annotator")
    annotator = str(annotator) if annotator not in (None, "") else None
    yield from _judgements(
        path, number, data, results, annotator, f"{row.get('id')}:{row.get('annotation_id')}", row, options
    )


def _annotation_cell(text: str):
    """A CSV cell as results or List items when it is JSON (or, from the old converter, a Python literal) of that
    shape; any other text stays text."""
    try:
        value = bounded_json.loads(text)
    except bounded_json.NestedTooDeep:
        return text  # neither results nor items nest that deep; the Python literal parser is not asked either
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)  # literals only: no names, calls or attributes are evaluated
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text
    return value if _is_result_list(value) or _is_item_list(value) else text


def _is_item_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) and "id" in item for item in value)


def _is_result_list(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and set(item) & _RESULT_KEYS for item in value)
    )


_RESULT_KEYS = {"selected", "ranker", "rating", "choices"}


def _annotator(completed_by) -> str | None:
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return None if completed_by in (None, "") else str(completed_by)


def _judgements(path, number, data, results, annotator, ranking_id, raw, options) -> Iterator:
    relevant = [r for r in results if _kind(r, options) not in (None, "rating")]
    ratings = [r for r in results if _kind(r, options) == "rating"]
    judgements = [[result] for result in relevant] + ([ratings] if ratings else [])
    if not results:
        yield Skipped(path, number, "empty result (submitted without a choice)", raw=raw)
    elif not judgements:
        yield Skipped(path, number, "no Pairwise, Ranker, Rating or preference Choices result", raw=raw)
    for group in judgements:
        result = group[0]
        name = ranking_id if len(judgements) == 1 else f"{ranking_id}:{result['from_name']}"
        kind = _kind(result, options)
        try:
            if options.prompt_field not in data:
                raise DataError(f"task data has no '{options.prompt_field}' (set the prompt_field option)")
            prompt = data[options.prompt_field]
            fields = {"id": name, "prompt": prompt, "annotator": annotator}
            if kind == "pairwise":
                yield _from_pairwise(path, number, raw, result["value"], data, prompt, name, annotator, options)
            elif kind == "ranker":
                yield _from_ranker(path, number, raw, result, data, prompt, name, annotator, options)
            elif kind == "choices":
                yield from_choices(path, number, raw, result, options.choices, _pair(data, options), data, fields)
            else:
                yield from_ratings(path, number, raw, group, options.labeling, options.config, data, fields)
        except BucketOrderUnknown as error:
            raise BucketOrderUnknown(error.reason, file=path, record=number, field=result["from_name"]) from None
        except DataError as error:
            yield invalid(path, number, error, raw)


def _kind(result: dict, options: _Options) -> str | None:
    value = result["value"] if isinstance(result.get("value"), dict) else {}
    if result.get("type") == "pairwise" or "selected" in value:
        return "pairwise"
    if result.get("type") == "ranker" or "ranker" in value:
        return "ranker"
    if result.get("type") == "rating" or "rating" in value:
        return "rating"
    chosen = value.get("choices")
    if isinstance(chosen, list) and chosen and all(str(c).strip().casefold() in options.choices for c in chosen):
        return "choices"  # only Choices whose values are all preference choices: others classify something else
    return None


def _from_pairwise(path, number, raw, value, data, prompt, ranking_id, annotator, options):
    selected = value.get("selected")
    if selected not in ("left", "right"):
        return Skipped(path, number, "pairwise with nothing selected", raw=raw)
    left, right = _pair(data, options)
    completions = (data.get(left), data.get(right))
    return build(
        path,
        number,
        raw,
        id=ranking_id,
        prompt=prompt,
        completions=completions,
        ranks=(1, 2) if selected == "left" else (2, 1),
        annotator=annotator,
    )


def _pair(data: dict, options: _Options) -> tuple[str, str]:
    return tuple(options.pair_fields) if options.pair_fields else _known_pair_fields(data)


def _known_pair_fields(data: dict) -> tuple[str, str]:
    for pair in KNOWN_PAIR_FIELDS:
        if all(key in data for key in pair):
            return pair
    raise DataError("cannot tell which task fields the Pairwise compared (set pair_fields=left,right)")


def _from_ranker(path, number, raw, result, data, prompt, ranking_id, annotator, options):
    ranked = result["value"].get("ranker")
    item_ids, texts = _list_items(data, options.list_field)
    flags = ()
    if isinstance(ranked, dict) and set(ranked) == {result["from_name"]}:
        ranked = ranked[result["from_name"]]  # rank mode: {"<ranker name>": [ids]}
    if isinstance(ranked, list):
        groups = [[item] for item in ranked]
        if [str(item) for item in ranked] == item_ids:
            flags = (UNTOUCHED,)
    elif isinstance(ranked, dict):
        names = _bucket_names(result["from_name"], options)
        unknown = sorted(set(ranked) - set(names) - {"_"})
        if unknown:
            raise DataError("ranker has buckets the labeling config does not name", field=", ".join(unknown))
        groups = [ranked.get(name) or [] for name in names]
        flags = (UNRANKED,) if ranked.get("_") else ()
    else:
        raise DataError("ranker value is neither a list of ids nor an object of buckets")
    completions, ranks = [], []
    for place, group in enumerate([group for group in groups if group], start=1):
        for item in group:
            if str(item) not in texts:
                raise DataError("ranker names an item that is not in the task's list")
            completions.append(texts[str(item)])
            ranks.append(place)
    return build(
        path,
        number,
        raw,
        flags,
        id=ranking_id,
        prompt=prompt,
        completions=completions,
        ranks=ranks,
        annotator=annotator,
    )


def _bucket_names(ranker: str, options: _Options) -> list[str]:
    if options.bucket_order:
        return options.bucket_order
    if options.labeling.buckets.get(ranker):
        return options.labeling.buckets[ranker]
    if options.config:
        raise BucketOrderUnknown(
            f'the labeling config {options.config} has no <Bucket> tags in a <Ranker name="{ranker}">'
        )
    raise BucketOrderUnknown(
        "bucket results, but no labeling config to order the buckets (export key order is not "
        "the bucket order): pass the project's config with --option config=CONFIG.xml, or "
        "--option bucket_order=best,...,worst"
    )


def _list_items(data: dict, list_field: str | None) -> tuple[list[str], dict[str, Any]]:
    """The List's item ids in shown order and their texts ("body", as the LLM Ranker template has it)."""
    if list_field is not None:
        items = data.get(list_field)
    else:
        items = next(
            (
                value
                for value in data.values()
                if isinstance(value, list) and value and all(isinstance(item, dict) and "id" in item for item in value)
            ),
            None,
        )
    if not isinstance(items, list):
        raise DataError("task data has no list of {id, body} items for the Ranker (set the list_field option)")
    ids, texts = [], {}
    for item in items:
        text = item.get("body", item.get("text")) if isinstance(item, dict) else None
        ids.append(str(item.get("id")) if isinstance(item, dict) else "")
        texts[ids[-1]] = text
    return ids, texts
