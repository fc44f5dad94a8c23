"""Label Studio <Rating> per response and <Choices> A/B/tie results -> rankings.

- <Rating name="rating1" toName="answer1"/>, one per response: each result is {"from_name": "rating1",
  "to_name": "answer1", "type": "rating", "value": {"rating": 4}} (labelstud.io/tags/rating). An annotation's
  ratings make one ranking: a higher rating is better and equal ratings are ties. A response the annotator left
  unrated has no result: it is left out and the ranking flagged.
- <Choices name="preference" toName=".."><Choice value="A"/><Choice value="B"/><Choice value="Tie"/></Choices>:
  value {"choices": ["A"]} (labelstud.io/tags/choices). "A" prefers the first pair field, "B" the second; a tie
  holds no preference pair and is skipped, counted.
"""

from __future__ import annotations

from typing import Any

from rlhf.data.rankings import is_finite_number, ranks_from_scores
from rlhf.errors import DataError
from rlhf.labels.importers.base import Imported, Skipped, build, invalid
from rlhf.labels.importers.label_studio_config import LabelingConfig

UNRATED_RESPONSES = "responses without a Rating: left out"
DEFAULT_PREFERENCE_CHOICES = ("A", "B", "Tie")


def from_ratings(
    path: str,
    number: int,
    raw: Any,
    results: list[dict],
    labeling: LabelingConfig,
    config: str | None,
    data: dict,
    fields: dict,
) -> Imported | Skipped:
    completions, ratings, rated_by = [], [], {}
    for result in results:
        control = result["from_name"]
        rating = result["value"].get("rating")
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            return invalid(path, number, DataError("rating is not a number", field=control), raw)
        if not is_finite_number(rating):  # NaN or Infinity, which json.loads reads: no place to rank it at
            return invalid(path, number, DataError(f"rating must be a finite number, not {rating}", field=control), raw)
        response = result.get("to_name") or labeling.controls.get(control, ("", ""))[1]
        if not response:
            return invalid(
                path,
                number,
                DataError(
                    "a Rating result names no response (JSON-MIN and CSV exports drop to_name): pass the labeling "
                    "config with --option config=CONFIG.xml",
                    field=control,
                ),
                raw,
            )
        key = labeling.data_key(response)
        if key not in data:
            hint = "" if config else " (pass the labeling config with --option config=CONFIG.xml)"
            return invalid(
                path, number, DataError(f"the rated object is not a task data key{hint}", field=control), raw
            )
        if key in rated_by:
            return invalid(
                path,
                number,
                DataError(
                    "two Ratings rate the same response: which one ranks is unknown",
                    field=f"{rated_by[key]}, {control}",
                ),
                raw,
            )
        rated_by[key] = control
        completions.append(data[key])
        ratings.append(rating)
    unrated = set(labeling.names_of("rating")) - {result["from_name"] for result in results}
    flags = (UNRATED_RESPONSES,) if unrated else ()
    return build(
        path, number, raw, flags, completions=completions, ranks=ranks_from_scores(ratings, "rating"), **fields
    )


def preference_choice_map(values: list[str] | None) -> dict[str, str]:
    """{casefolded <Choice> value: "left" | "right" | "tie"} from "left,right[,tie]" choice values."""
    values = list(DEFAULT_PREFERENCE_CHOICES) if values is None else values
    if len(values) not in (2, 3):
        raise DataError("preference_choices must name 2 or 3 <Choice> values: left,right[,tie]")
    return {value.strip().casefold(): meaning for value, meaning in zip(values, ("left", "right", "tie"))}


def from_choices(
    path: str,
    number: int,
    raw: Any,
    result: dict,
    choice_map: dict[str, str],
    pair: tuple[str, str],
    data: dict,
    fields: dict,
) -> Imported | Skipped:
    chosen = result["value"]["choices"]
    if len(chosen) != 1:
        return invalid(
            path, number, DataError("more than one preference choice selected", field=result["from_name"]), raw
        )
    meaning = choice_map[str(chosen[0]).strip().casefold()]
    if meaning == "tie":
        return Skipped(path, number, "tie chosen: no preference pair", raw=raw)
    left, right = pair
    return build(
        path,
        number,
        raw,
        completions=(data.get(left), data.get(right)),
        ranks=(1, 2) if meaning == "left" else (2, 1),
        **fields,
    )
