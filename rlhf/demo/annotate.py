"""Simulated people labeling the demo's Label Studio tasks, written as Label Studio's JSON export.

    python -m rlhf.demo.annotate tasks.json -o export.json

Stands in for the weeks humans spend in Label Studio: each task is ranked by one simulated labeler
(a share, `--overlap`, by two, who may disagree: the import summary and the report show how much they agree),
a few are skipped, and the file has the shape of Label Studio's full JSON export, so the real importer
(`python -m rlhf.labels import --format label_studio`) reads it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rlhf.demo.labelers import make_labelers, rank_responses
from rlhf.demo.task import gold_score
from rlhf.io import atomic_write_text

RANKER_NAME, LIST_NAME = "rank", "responses"  # the names in rlhf.labels.exporters' labeling config
OVERLAP = 0.2  # share of tasks ranked by two labelers


def annotate_tasks(
    tasks: list[dict],
    *,
    seed: int = 0,
    labelers: int = 4,
    second_opinion_rate: float = OVERLAP,
    skip_rate: float = 0.02,
) -> list[dict]:
    """Label Studio export records for `tasks`, ranked by simulated labelers from the gold score."""
    rng = random.Random(seed)
    panel = make_labelers(labelers, seed=seed)
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        items = task["data"]["items"]
        gold = [gold_score(task["data"]["prompt"], item["body"]) for item in items]
        annotators = rng.sample(range(len(panel)), 2 if rng.random() < second_opinion_rate else 1)
        annotations = []
        for annotator in annotators:
            annotation_id = len(exported) * 10 + len(annotations) + 1
            if rng.random() < skip_rate:
                annotations.append(_annotation(annotation_id, task_id, annotator, [], cancelled=True))
                continue
            # Rank mode of the Ranker has no ties, so the labelers here order every response.
            ranks = rank_responses(panel[annotator], gold, rng, tie_rate=0.0)
            order = [items[i]["id"] for i in sorted(range(len(items)), key=lambda i: ranks[i])]
            result = [
                {
                    "id": f"r{task_id}-{annotator}",
                    "type": "ranker",
                    "origin": "manual",
                    "from_name": RANKER_NAME,
                    "to_name": LIST_NAME,
                    "value": {"ranker": {RANKER_NAME: order}},
                }
            ]
            annotations.append(_annotation(annotation_id, task_id, annotator, result, cancelled=False))
        exported.append(
            {
                "id": task_id,
                "data": task["data"],
                "annotations": annotations,
                "drafts": [],
                "predictions": [],
                "meta": {},
                "total_annotations": len(annotations),
                "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
            }
        )
    return exported


def _annotation(annotation_id: int, task_id: int, annotator: int, result: list, *, cancelled: bool) -> dict:
    return {
        "id": annotation_id,
        "completed_by": {"id": annotator + 1, "email": f"labeler-{annotator}@demo.local"},
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "task": task_id,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "lead_time": 30.0,
        "prediction": {},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.demo.annotate", description=__doc__.splitlines()[0])
    parser.add_argument("tasks", help="Label Studio tasks written by `python -m rlhf.labels export`")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overlap",
        type=float,
        default=OVERLAP,
        help=f"share of tasks ranked by two labelers, for their agreement (default {OVERLAP})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.overlap <= 1:
        parser.error(f"--overlap must be between 0 and 1, got {args.overlap}")
    exported = annotate_tasks(
        json.loads(Path(args.tasks).read_text()), seed=args.seed, second_opinion_rate=args.overlap
    )
    atomic_write_text(args.output, json.dumps(exported, indent=2))
    print(f"{len(exported)} tasks annotated by simulated labelers -> {args.output}")


if __name__ == "__main__":
    main()
