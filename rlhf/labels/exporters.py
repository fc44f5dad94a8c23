"""Prompts with K completions -> ranking tasks for Label Studio and Argilla, in the shapes our importers read back.

Pure and model-free: sampling the completions from a policy belongs to the `export` subcommand. Completions are
deduplicated (identical samples would waste an annotator's comparison) and shuffled with a seed, so that the
position on screen says nothing about which sample came first.

- Label Studio: a tasks file such as `tasks.json` (a list of
  {"data": {"prompt_id", "prompt", "items": [{"id", "title", "body"}]}}) and `tasks.config.xml` beside it, a
  <List> + <Ranker> labeling config. Item ids are "r1".."rK", not numbers: the Ranker keeps items in a JavaScript
  object, which would reorder integer-like keys. Chat prompts use <Paragraphs>.
- Argilla v2: a records file such as `records.json` (with `records.settings.json` beside it), flat dicts for
  `dataset.records.log(...)` ({"id", "prompt", "response-1", ...}), and `settings.json` in `rg.Settings.from_json`
  shape, with a RankingQuestion whose options are the field names. Argilla's options are fixed per dataset, so every
  prompt needs the same number of distinct completions.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from rlhf.data.rankings import Prompt, check_ranking
from rlhf.errors import DataError
from rlhf.io import write_files_together

RANKER_NAME, LIST_NAME, QUESTION_NAME = "rank", "responses", "ranking"


def prepare(items: Iterable[tuple[Prompt, Sequence[str]]], seed: int = 0) -> list[tuple[str, Prompt, list[str]]]:
    """(prompt_id, prompt, distinct completions in a seeded shuffled order) for each (prompt, completions)."""
    rng = random.Random(seed)
    prepared = []
    for number, (prompt, completions) in enumerate(items, start=1):
        distinct = list(dict.fromkeys(completions))
        try:  # the checks a ranking of these completions will face, made now rather than after labeling
            check_ranking(f"p{number}", prompt, distinct, list(range(1, len(distinct) + 1)))
        except DataError as error:
            raise DataError(error.reason, record=number, field=error.field) from None
        rng.shuffle(distinct)
        prepared.append((f"p{number}", prompt, distinct))
    return prepared


def _is_chat(prompts: Sequence[Prompt]) -> bool:
    return any(isinstance(prompt, list) for prompt in prompts)


def _as_chat(prompt: Prompt) -> list:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


# -- Label Studio -------------------------------------------------------------------------------------------------


def label_studio_tasks(items, *, seed: int = 0) -> list[dict]:
    prepared = prepare(items, seed)
    chat = _is_chat([prompt for _, prompt, _ in prepared])
    return [
        {
            "data": {
                "prompt_id": prompt_id,
                "prompt": _as_chat(prompt) if chat else prompt,
                "items": [
                    {"id": f"r{j}", "title": f"Response {j}", "body": text}
                    for j, text in enumerate(completions, start=1)
                ],
            }
        }
        for prompt_id, prompt, completions in prepared
    ]


def label_studio_config(*, chat: bool = False) -> str:
    """A labeling config: the prompt, then a Ranker to drag the responses into order, best first."""
    prompt = (
        '<Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>'
        if chat
        else '<Text name="prompt" value="$prompt"/>'
    )
    return "\n".join(
        [
            "<View>",
            '  <Header value="Prompt"/>',
            f"  {prompt}",
            '  <Header value="Drag the responses into order: best at the top"/>',
            f'  <List name={quoteattr(LIST_NAME)} value="$items" title="Responses"/>',
            f"  <Ranker name={quoteattr(RANKER_NAME)} toName={quoteattr(LIST_NAME)}/>",
            "</View>",
            "",
        ]
    )


def write_label_studio_export(items, tasks_path: str | os.PathLike, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the tasks to `tasks_path` and the labeling config beside it (`<stem>.config.xml`); return both paths."""
    tasks_path = Path(tasks_path)
    tasks = label_studio_tasks(items, seed=seed)
    chat = any(isinstance(task["data"]["prompt"], list) for task in tasks)
    return _write_pair(
        tasks_path,
        json.dumps(tasks, ensure_ascii=False, indent=2),
        tasks_path.with_name(tasks_path.stem + ".config.xml"),
        label_studio_config(chat=chat),
    )


# -- Argilla ------------------------------------------------------------------------------------------------------


def argilla_records(items, *, seed: int = 0) -> list[dict]:
    prepared = prepare(items, seed)
    sizes = {len(completions) for _, _, completions in prepared}
    if len(sizes) > 1:
        counts = ", ".join(f"{pid}: {len(c)}" for pid, _, c in prepared)
        raise DataError(f"Argilla needs the same number of distinct completions for every prompt ({counts})")
    chat = _is_chat([prompt for _, prompt, _ in prepared])
    return [
        {
            "id": prompt_id,
            "prompt": _as_chat(prompt) if chat else prompt,
            **{f"response-{j}": text for j, text in enumerate(completions, start=1)},
        }
        for prompt_id, prompt, completions in prepared
    ]


def argilla_settings(k: int, *, chat: bool = False) -> dict:
    """Settings with the prompt field, K response fields and a RankingQuestion over them."""
    responses = [f"response-{j}" for j in range(1, k + 1)]
    prompt_settings = {"type": "chat", "use_markdown": True} if chat else {"type": "text", "use_markdown": False}
    return {
        "guidelines": "Rank the responses to the prompt, best first. Give equal ranks only when truly equal.",
        "fields": [{"name": "prompt", "title": "Prompt", "required": True, "settings": prompt_settings}]
        + [
            {
                "name": name,
                "title": f"Response {j}",
                "required": True,
                "settings": {"type": "text", "use_markdown": False},
            }
            for j, name in enumerate(responses, 1)
        ],
        "questions": [
            {
                "name": QUESTION_NAME,
                "title": "Rank the responses, best first",
                "description": None,
                "required": True,
                "settings": {
                    "type": "ranking",
                    "options": [
                        {"value": name, "text": f"Response {j}", "description": None}
                        for j, name in enumerate(responses, 1)
                    ],
                },
            }
        ],
        "vectors": [],
        "metadata": [],
        "allow_extra_metadata": False,
    }


def write_argilla_export(items, records_path: str | os.PathLike, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the records to `records_path` and the dataset settings beside it (`<stem>.settings.json`)."""
    records_path = Path(records_path)
    records = argilla_records(items, seed=seed)
    settings = argilla_settings(
        sum(key.startswith("response-") for key in records[0]) if records else 2,
        chat=any(isinstance(record["prompt"], list) for record in records),
    )
    return _write_pair(
        records_path,
        json.dumps(records, ensure_ascii=False, indent=2),
        records_path.with_name(records_path.stem + ".settings.json"),
        json.dumps(settings, ensure_ascii=False, indent=2),
    )


def _write_pair(path: Path, text: str, config_path: Path, config: str) -> tuple[Path, Path]:
    """Tasks and their config written as a pair: a tool never gets new tasks beside an old config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_files_together({path: [text], config_path: [config]})
    return path, config_path
