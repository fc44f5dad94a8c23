"""Export prompts with completions, simulate annotators in each tool's export shape, and import them back."""

from __future__ import annotations

import errno
import json
import re
import xml.etree.ElementTree as ElementTree

import pytest

from rlhf.errors import DataError, RLHFError
from rlhf.labels.cli import main
from rlhf.labels.exporters import (
    argilla_records,
    argilla_settings,
    label_studio_config,
    label_studio_tasks,
    write_argilla_export,
    write_label_studio_export,
)
from rlhf.labels.importers import import_rankings
from rlhf.labels.importers.label_studio import UNTOUCHED
from tests.helpers.full_disk_hook import writes_fail

# Each completion carries its true quality, so a simulated annotator can rank it and the test can check the result.
ITEMS = [
    ("Which planet is the largest?", ["Jupiter. [q=3]", "Mars. [q=1]", "Saturn. [q=2]", "Jupiter. [q=3]"]),
    ("Name a prime number.", ["Seven. [q=3]", "Nine. [q=1]", "Two. [q=2]"]),
    (
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}],
        ["Paris. [q=3]", "Lyon. [q=2]", "Berlin. [q=1]"],
    ),
]


def quality(text: str) -> int:
    return int(re.search(r"\[q=(\d)\]", text).group(1))


def test_completions_are_deduplicated_and_shuffled_with_a_seed():
    tasks = label_studio_tasks(ITEMS[:2], seed=0)
    bodies = [[item["body"] for item in task["data"]["items"]] for task in tasks]
    assert sorted(bodies[0]) == ["Jupiter. [q=3]", "Mars. [q=1]", "Saturn. [q=2]"]  # the duplicate is gone
    assert [task["data"]["prompt_id"] for task in tasks] == ["p1", "p2"]
    assert label_studio_tasks(ITEMS[:2], seed=0) == tasks  # same seed, same order
    orders = {json.dumps(label_studio_tasks(ITEMS[:2], seed=seed)) for seed in range(6)}
    assert len(orders) > 1  # the seed does change the on-screen order
    assert [item["id"] for item in tasks[0]["data"]["items"]] == ["r1", "r2", "r3"]


def test_bad_items_are_refused_before_anyone_labels_them():
    with pytest.raises(DataError, match="record 2: field 'completions': needs at least 2 completions"):
        label_studio_tasks([ITEMS[0], ("Same?", ["yes", "yes"])])
    with pytest.raises(DataError, match="record 1: field 'completions': completion 1 of 2 is empty"):
        argilla_records([("Empty?", ["", "no"])])


def test_label_studio_config_is_a_ranker_over_the_list():
    for chat in (False, True):
        view = ElementTree.fromstring(label_studio_config(chat=chat))
        ranker, items = view.find("Ranker"), view.find("List")
        assert ranker.get("toName") == items.get("name") and items.get("value") == "$items"
        prompt = view.find("Paragraphs" if chat else "Text")
        assert prompt.get("name") == "prompt" and prompt.get("value") == "$prompt"


def simulated_label_studio_export(tasks, leave_untouched=()):
    """Label Studio's JSON export after one annotator ranked every task by quality, best first."""
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        items = task["data"]["items"]
        order = [item["id"] for item in sorted(items, key=lambda item: -quality(item["body"]))]
        if task_id in leave_untouched:
            order = [item["id"] for item in items]
        result = [
            {
                "id": f"res{task_id}",
                "from_name": "rank",
                "to_name": "responses",
                "type": "ranker",
                "origin": "manual",
                "value": {"ranker": {"rank": order}},
            }
        ]
        exported.append(
            {
                "id": task_id,
                "data": task["data"],
                "drafts": [],
                "predictions": [],
                "annotations": [
                    {
                        "id": 100 + task_id,
                        "completed_by": 1,
                        "result": result,
                        "was_cancelled": False,
                        "ground_truth": False,
                        "lead_time": 9.5,
                    }
                ],
            }
        )
    return exported


def test_label_studio_round_trip(tmp_path):
    tasks_path, config_path = write_label_studio_export(ITEMS, tmp_path / "ls" / "tasks.json", seed=3)
    assert "<Paragraphs" in config_path.read_text()  # one prompt is a chat: all are shown as dialogues
    tasks = json.loads(tasks_path.read_text())
    export = tmp_path / "project-1-at-2024.json"
    export.write_text(json.dumps(simulated_label_studio_export(tasks, leave_untouched={2})))
    report = import_rankings("label_studio", [str(export)])
    assert len(report.rankings) == 3 and report.skipped == {}
    for ranking in report.rankings[:1] + report.rankings[2:]:
        assert [quality(text) for text in ranking.completions] == [3, 2, 1] and ranking.ranks == (1, 2, 3)
    assert report.rankings[0].prompt == [{"role": "user", "content": "Which planet is the largest?"}]
    assert report.rankings[2].prompt == ITEMS[2][0]
    assert report.flagged == {UNTOUCHED: ["2:102"]}


def test_label_studio_round_trip_through_json_min(tmp_path):
    tasks = label_studio_tasks(ITEMS[:2], seed=1)
    rows = []
    for task in simulated_label_studio_export(tasks):
        annotation = task["annotations"][0]
        rows.append(
            {
                **task["data"],
                "id": task["id"],
                "rank": [annotation["result"][0]["value"]],
                "annotator": 1,
                "annotation_id": annotation["id"],
                "created_at": None,
                "updated_at": None,
                "lead_time": annotation["lead_time"],
            }
        )
    (tmp_path / "min.json").write_text(json.dumps(rows))
    report = import_rankings("label_studio", [str(tmp_path / "min.json")])
    assert [[quality(text) for text in r.completions] for r in report.rankings] == [[3, 2, 1], [3, 2, 1]]


def test_argilla_settings_match_the_records():
    records = argilla_records(ITEMS[:2], seed=0)
    settings = argilla_settings(3)
    options = [option["value"] for option in settings["questions"][0]["settings"]["options"]]
    assert options == ["response-1", "response-2", "response-3"]
    assert [field["name"] for field in settings["fields"]] == ["prompt"] + options
    assert settings["questions"][0]["settings"]["type"] == "ranking"
    assert set(records[0]) == {"id", "prompt", *options}


def test_argilla_needs_the_same_k_everywhere():
    with pytest.raises(DataError, match=r"same number of distinct completions for every prompt \(p1: 2, p2: 3\)"):
        argilla_records([("a?", ["x", "y"]), ("b?", ["x", "y", "z"])])


def test_argilla_round_trip_through_the_rest_api_keeps_ties(tmp_path):
    records_path, settings_path = write_argilla_export(ITEMS[1:], tmp_path / "argilla" / "records.json", seed=5)
    settings = json.loads(settings_path.read_text())
    assert settings["fields"][0]["settings"]["type"] == "chat"
    items = []
    for number, record in enumerate(json.loads(records_path.read_text())):
        options = [name for name in record if name.startswith("response-")]
        # the annotator ties the two worst answers: rank 1 for q=3, rank 2 for the rest
        ranking = [{"value": name, "rank": 1 if quality(record[name]) == 3 else 2} for name in options]
        items.append(
            {
                "id": f"uuid-{number}",
                "external_id": record["id"],
                "fields": {key: value for key, value in record.items() if key != "id"},
                "responses": [
                    {"values": {"ranking": {"value": ranking}}, "status": "submitted", "user_id": "annotator-1"}
                ],
            }
        )
    (tmp_path / "records_api.json").write_text(json.dumps({"items": items, "total": len(items)}))
    report = import_rankings("argilla", [str(tmp_path / "records_api.json")])
    assert report.skipped == {} and report.flagged == {}
    for ranking in report.rankings:
        assert sorted(zip(ranking.ranks, map(quality, ranking.completions))) == [(1, 3), (2, 1), (2, 2)]
        assert ranking.annotator == "annotator-1"
    assert report.rankings[1].prompt == ITEMS[2][0]


def test_argilla_round_trip_through_rest_records(tmp_path):
    # the REST records with responses keep the ranks; the SDK's to_list drops them (refused by the importer)
    records = argilla_records(ITEMS[:2], seed=2)
    exported = [
        {
            "id": record["id"],
            "fields": {k: v for k, v in record.items() if k != "id"},
            "responses": [
                {
                    "values": {
                        "ranking": {
                            "value": [
                                {"value": name, "rank": place}
                                for place, name in enumerate(
                                    sorted(
                                        (n for n in record if n.startswith("response-")),
                                        key=lambda n: -quality(record[n]),
                                    ),
                                    start=1,
                                )
                            ]
                        }
                    },
                    "status": "submitted",
                    "user_id": "annotator-2",
                }
            ],
        }
        for record in records
    ]
    (tmp_path / "rest.json").write_text(json.dumps({"items": exported}))
    report = import_rankings("argilla", [str(tmp_path / "rest.json")])
    assert [[quality(text) for text in r.completions] for r in report.rankings] == [[3, 2, 1], [3, 2, 1]]
    assert [r.id for r in report.rankings] == ["p1:annotator-2", "p2:annotator-2"]


def test_a_full_disk_while_exporting_is_one_line_and_leaves_the_old_tasks_and_config(tmp_path, monkeypatch):
    tasks_path, config_path = write_label_studio_export(ITEMS, tmp_path / "tasks.json", seed=3)
    before = tasks_path.read_text(), config_path.read_text()
    writes_fail(monkeypatch, "tasks.config.xml", errno.ENOSPC)  # the second of the pair
    with pytest.raises(RLHFError) as raised:
        write_label_studio_export(ITEMS[1:], tasks_path, seed=4)
    assert str(raised.value).startswith(f"no space left on device writing {config_path} (")
    assert (tasks_path.read_text(), config_path.read_text()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tasks.config.xml", "tasks.json"]


def test_cli_export_to_a_directory_is_one_line_before_any_sampling(tmp_path, capsys):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Say hi."}\n')
    with pytest.raises(SystemExit) as exit:
        main(
            [
                "export",
                "--policy",
                "no-such-policy",
                "--prompts",
                str(tmp_path / "prompts.jsonl"),
                "--format",
                "label-studio",
                "-o",
                str(tmp_path),
            ]
        )
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: is a directory; name a file to write\n"
