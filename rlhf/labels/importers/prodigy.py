"""Prodigy answers (`prodigy db-out <dataset>` JSONL) from the compare and choice interfaces -> rankings.

Every answered task carries "answer": "accept" | "reject" | "ignore", plus "_input_hash", "_task_hash",
"_view_id", "_session_id", "_annotator_id" (by default "<dataset>-<session>") and "_timestamp".
- compare (`prodigy compare`, the A/B evaluation): {"input": {"text": prompt}, "accept": {"text": output},
  "reject": {"text": output}, "mapping": {"A": "accept", "B": "reject"}}. The two outputs sit under the keys
  "accept" and "reject" whatever the annotator thought of them; answer "accept" prefers the "accept" output,
  "reject" prefers the "reject" output. "mapping" only records which model's output went where.
- choice: {"text": prompt, "options": [{"id", "text"}], "accept": [ids of the selected options]}: the selected
  options beat the others (two tie groups). A choice answered "reject" judged the task, not the options.
"ignore" means skipped, in both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.labels.importers.base import Skipped, build, each_record, invalid


def read_prodigy(paths: Sequence[str], *, prompt_field: str = "text") -> Iterator:
    """Yield RecordsRead, Imported and Skipped events for Prodigy JSONL exports.

    prompt_field: the task key holding a choice task's prompt (compare tasks use input.text).
    """
    return each_record(
        paths, "a Prodigy export", _problem_with, lambda path, number, task: _answer(path, number, task, prompt_field)
    )


def _problem_with(record: Any) -> str | None:
    if not isinstance(record, dict) or "answer" not in record:
        return "records have no 'answer' (export with prodigy db-out)"
    return None


def _annotator(task: dict) -> str | None:
    return task.get("_annotator_id") or task.get("_session_id") or None


def _answer(path: str, number: int, task: dict, prompt_field: str):
    answer = task["answer"]
    if answer == "ignore":
        return Skipped(path, number, "answer: ignore", raw=task)
    if answer not in ("accept", "reject"):
        return invalid(path, number, f"unknown answer {answer!r}", task)
    # The same task answered by several annotators shares its _task_hash.
    ranking_id = ":".join(str(part) for part in (task.get("_task_hash", number), _annotator(task)) if part)
    if isinstance(task.get("options"), list):
        return _choice(path, number, task, prompt_field, ranking_id)
    if isinstance(task.get("accept"), dict) and isinstance(task.get("reject"), dict):
        return _compare(path, number, task, ranking_id)
    return invalid(path, number, "neither a compare task (input/accept/reject) nor a choice task (options)", task)


def _compare(path: str, number: int, task: dict, ranking_id: str):
    prompt = (task.get("input") or {}).get("text")
    return build(
        path,
        number,
        task,
        id=ranking_id,
        prompt=prompt,
        completions=(task["accept"].get("text"), task["reject"].get("text")),
        ranks=(1, 2) if task["answer"] == "accept" else (2, 1),
        annotator=_annotator(task),
    )


def _choice(path: str, number: int, task: dict, prompt_field: str, ranking_id: str):
    if task["answer"] == "reject":
        return Skipped(path, number, "choice answered reject (the task, not an option)", raw=task)
    selected = set(map(str, task.get("accept") or []))
    if not selected:
        return Skipped(path, number, "choice with nothing selected", raw=task)
    options = [option for option in task["options"] if isinstance(option, dict)]
    if len(selected) == len(options):
        return Skipped(path, number, "choice with every option selected", raw=task)
    return build(
        path,
        number,
        task,
        id=ranking_id,
        prompt=task.get(prompt_field),
        completions=[option.get("text") for option in options],
        ranks=[1 if str(option.get("id")) in selected else 2 for option in options],
        annotator=_annotator(task),
    )
