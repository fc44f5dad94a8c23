"""The demo's simulated labelers: a share of the tasks (`--overlap`) is ranked by two of them, and the real importer
reads their agreement back."""

from __future__ import annotations

import json

import pytest

from rlhf.demo.annotate import annotate_tasks, main
from rlhf.demo.task import correct_answer, make_split, parse_prompt
from rlhf.labels.exporters import label_studio_tasks


def _tasks(count: int = 40) -> list[dict]:
    items = []
    for record in make_split(count, seed=5):
        answer = " ".join(correct_answer(parse_prompt(record["prompt"])))
        items.append((record["prompt"], [answer, "ok : " + answer, "cat dog", answer + " owl"]))
    return label_studio_tasks(items, seed=0)


def _annotators(task: dict) -> list[int]:
    return [annotation["completed_by"]["id"] for annotation in task["annotations"]]


@pytest.mark.parametrize("overlap, twice", [(0.0, 0), (1.0, 40)])
def test_overlap_is_the_share_of_tasks_two_labelers_rank(overlap, twice):
    exported = annotate_tasks(_tasks(), seed=0, second_opinion_rate=overlap)
    assert sum(len(_annotators(task)) == 2 for task in exported) == twice
    assert all(len(set(_annotators(task))) == len(_annotators(task)) for task in exported)  # two different people


def test_the_import_summary_shows_how_much_the_simulated_labelers_agree(tmp_path, capsys):
    from rlhf.labels.cli import main as labels_main

    tasks, export = tmp_path / "tasks.json", tmp_path / "export.json"
    tasks.write_text(json.dumps(_tasks()))
    main([str(tasks), "-o", str(export), "--overlap", "0.5"])
    labels_main(["import", "--format", "label-studio", str(export), "-o", str(tmp_path / "rankings.jsonl")])
    summary = capsys.readouterr().out
    agreement = next(line for line in summary.splitlines() if line.startswith("labeler agreement: pairwise"))
    pairwise = float(agreement.split()[3])
    assert 0.5 < pairwise <= 1.0  # these responses differ clearly: the labelers mostly agree


def test_overlap_outside_0_to_1_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "tasks.json"), "-o", str(tmp_path / "export.json"), "--overlap", "1.5"])
