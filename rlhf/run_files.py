"""What a stage run writes into its output_dir: one owner for the names, read back by the pipeline and the report.

    resolved_config.yaml    every field's value for this run (feed it back with --config)
    metrics.json            the final metrics, also stored in the registry entry
    registering.json        {"name": "sft", "run_id": ...}: written just before registering, so that a run killed
                            between registering and writing registered.json still finds its entry
    registered.json         {"reference": "sft@3", "path": ...}: the model this run registered
    log_history.jsonl       the Trainer's log rows (SFT, RM)
    gold_samples.json       a few graded responses (SFT with a gold scorer)
    calibration.json        the reward model's reliability diagram on held-out pairs (RM)
    ppo_metrics.jsonl       one row per PPO step
    samples.json            PPO against SFT on held-out prompts, side by side
    eval_metrics.jsonl      PPO's held-out RM score, gold score and KL every eval_steps
    final_model/            the saved model, until registration moves it into the registry
    .run.lock               locked while a run writes here (its pid and host inside; rlhf.run_lock), also in the
                            pipeline's run_dir

and, beside the stages in a run directory (the pipeline's run_dir):

    evaluation/best_of_n.json   best-of-N of the SFT policy under the reward model (python -m rlhf.evaluate)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf.errors import DataError

RESOLVED_CONFIG = "resolved_config.yaml"
METRICS = "metrics.json"
REGISTERING = "registering.json"
REGISTERED = "registered.json"
LOG_HISTORY = "log_history.jsonl"
GOLD_SAMPLES = "gold_samples.json"
RM_CALIBRATION = "calibration.json"
PPO_METRICS = "ppo_metrics.jsonl"
PPO_SAMPLES = "samples.json"
PPO_EVAL_METRICS = "eval_metrics.jsonl"
FINAL_MODEL = "final_model"
RUN_LOCK = ".run.lock"
EVALUATION_DIR = "evaluation"
BEST_OF_N = "best_of_n.json"


def best_of_n_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVALUATION_DIR / BEST_OF_N


def registered(output_dir: str | Path) -> dict[str, Any] | None:
    """What a finished run wrote about the model it registered ("reference", "path"), or None."""
    path = Path(output_dir) / REGISTERED
    return json.loads(path.read_text()) if path.is_file() else None


def registered_reference(output_dir: str | Path, registry=None) -> str | None:
    """The registry reference a finished run wrote, or None when it registered nothing.

    With `registry`, a run that was killed after its entry was written but before registered.json was is
    recognised by the run id it announced in registering.json.
    """
    output_dir = Path(output_dir)
    if (finished := registered(output_dir)) is not None:
        return finished["reference"]
    if registry is None or not (output_dir / REGISTERING).is_file():
        return None
    intent = json.loads((output_dir / REGISTERING).read_text())
    entry = registry.registered_by(intent["name"], intent["run_id"])
    return entry.reference if entry else None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file the stages wrote; [] when it is missing.

    A last line cut short (a kill or a full disk during the append) is left out: the rows before it are whole.
    A bad line anywhere else is damage, not a torn append, and an error naming the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise DataError(f"line {number} is not valid JSON", file=str(path)) from None
    return rows
