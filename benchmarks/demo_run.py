"""The end-to-end demo, read from a pipeline run directory: wall time per stage and PPO's gold-score gain over SFT.

The pipeline itself writes the run; this only reads it. Stage directories are found by their metrics.json
(sft/, rm/, ppo/ or any subdirectory holding one with the stage's keys). Wall time per stage comes from the
pipeline's own timing file when it wrote one (a JSON with per-stage seconds: timings.json, pipeline.json or
summary.json), else from each stage's own record of its training loop, marked as such.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf import run_files

STAGES = ("sft", "rm", "ppo")
TIMING_FILES = ("timings.json", "pipeline.json", "summary.json", "pipeline_summary.json")


def find_stage_dirs(run_dir: Path) -> dict[str, Path]:
    found = {}
    for metrics in sorted(run_dir.rglob(run_files.METRICS)):
        if "registry" in metrics.parts:
            continue
        keys = set(json.loads(metrics.read_text()))
        stage = (
            "ppo"
            if {"gold_score_ppo", "win_rate_rm", "kl_final"} & keys
            else "rm"
            if any(k.startswith("eval_pairwise_accuracy") for k in keys)
            else "sft"
            if {"eval_loss", "gold_score_after"} & keys
            else None
        )
        name = metrics.parent.name
        stage = name if name in STAGES else stage
        if stage and stage not in found:
            found[stage] = metrics.parent
    return found


def stage_seconds_from_pipeline(run_dir: Path) -> dict[str, float]:
    for name in TIMING_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text())
        for container in (
            value,
            value.get("stages", {}) if isinstance(value, dict) else {},
            value.get("timings", {}) if isinstance(value, dict) else {},
        ):
            seconds = {}
            for stage in STAGES:
                entry = container.get(stage) if isinstance(container, dict) else None
                if isinstance(entry, (int, float)):
                    seconds[stage] = float(entry)
                elif isinstance(entry, dict):
                    for key in ("seconds", "wall_seconds", "wall_time_s", "elapsed_s", "time_s"):
                        if isinstance(entry.get(key), (int, float)):
                            seconds[stage] = float(entry[key])
                            break
            if seconds:
                return seconds
    return {}


def stage_seconds_from_stage(stage_dir: Path) -> float | None:
    """The stage's own record of its training loop: the Trainer's `train_runtime` (SFT, RM), or the sum of
    the per-step phase times in ppo_metrics.jsonl (PPO). Loading, evaluation and saving are not in it."""
    metrics = json.loads((stage_dir / run_files.METRICS).read_text())
    if isinstance(metrics.get("train_runtime"), (int, float)):
        return float(metrics["train_runtime"])
    history = stage_dir / run_files.LOG_HISTORY
    if history.is_file():
        for line in reversed(history.read_text().splitlines()):
            row = json.loads(line) if line.strip() else {}
            if isinstance(row.get("train_runtime"), (int, float)):
                return float(row["train_runtime"])
    steps = stage_dir / "ppo_metrics.jsonl"
    if steps.is_file():
        rows = [json.loads(line) for line in steps.read_text().splitlines() if line.strip()]
        return sum(row.get(key, 0.0) for row in rows for key in ("time_generation", "time_scoring", "time_training"))
    return None


def read(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {"measured": False, "note": "not measured: no pipeline run given (--demo-run runs/<name>)"}
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {"measured": False, "note": f"not measured: {run_dir} is not a directory"}
    stages = find_stage_dirs(run_dir)
    if not stages:
        return {"measured": False, "note": f"not measured: no stage metrics.json under {run_dir}"}
    seconds = stage_seconds_from_pipeline(run_dir)
    source = (
        "pipeline's timing file"
        if seconds
        else "stages' own records of their training loops (Trainer train_runtime; PPO: its per-step phase times)"
    )
    if not seconds:
        seconds = {
            stage: value for stage, path in stages.items() if (value := stage_seconds_from_stage(path)) is not None
        }
    metrics = {stage: json.loads((path / run_files.METRICS).read_text()) for stage, path in stages.items()}
    result = {
        "measured": True,
        "run_dir": str(run_dir),
        "stage_dirs": {k: str(v) for k, v in stages.items()},
        "stage_seconds": seconds,
        "seconds_source": source,
    }
    ppo = metrics.get("ppo", {})
    if "gold_score_ppo" in ppo and "gold_score_sft" in ppo:
        result.update(
            gold_score_sft=ppo["gold_score_sft"],
            gold_score_ppo=ppo["gold_score_ppo"],
            gold_gain=ppo["gold_score_ppo"] - ppo["gold_score_sft"],
            win_rate_gold=ppo.get("win_rate_gold"),
        )
    sft = metrics.get("sft", {})
    if "gold_score_before" in sft and "gold_score_after" in sft:
        result["sft_gold_gain"] = sft["gold_score_after"] - sft["gold_score_before"]
    return result


def markdown(result: dict) -> str:
    if not result.get("measured"):
        return result["note"]
    lines = ["| stage | wall time (s) |", "|---|---:|"]
    for stage in STAGES:
        if stage in result["stage_seconds"]:
            lines.append(f"| {stage} | {result['stage_seconds'][stage]:.1f} |")
    lines.append(f"\nWall times from the {result['seconds_source']}.")
    if "gold_gain" in result:
        lines.append(
            f"Gold score: SFT {result['gold_score_sft']:.3f} -> PPO {result['gold_score_ppo']:.3f} "
            f"(gain {result['gold_gain']:+.3f}; gold win rate of PPO over SFT "
            f"{result.get('win_rate_gold') or float('nan'):.2f})."
        )
    else:
        lines.append("Gold score gain: not measured (the run's PPO metrics.json has no gold scores).")
    return "\n".join(lines)
