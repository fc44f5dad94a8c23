"""The end-to-end demo, read from a pipeline run directory: wall time per stage and PPO's gold-score gain over SFT.

The pipeline itself writes the run; this only reads it. Stage directories are found by their metrics.json
(sft/, rm/, ppo/ or any subdirectory holding one with the stage's keys). Wall time per stage comes from the
pipeline's own timing file when it wrote one (a JSON with per-stage seconds: timings.json, pipeline.json or
summary.json), else from the stage directory's file times (first file written to metrics.json), marked as such.
"""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("sft", "rm", "ppo")
TIMING_FILES = ("timings.json", "pipeline.json", "summary.json", "pipeline_summary.json")


def find_stage_dirs(run_dir: Path) -> dict[str, Path]:
    found = {}
    for metrics in sorted(run_dir.rglob("metrics.json")):
        if "registry" in metrics.parts:
            continue
        keys = set(json.loads(metrics.read_text()))
        stage = ("ppo" if {"gold_score_ppo", "win_rate_rm", "kl_final"} & keys else
                 "rm" if any(k.startswith("eval_pairwise_accuracy") for k in keys) else
                 "sft" if {"eval_loss", "gold_score_after"} & keys else None)
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
        for container in (value, value.get("stages", {}) if isinstance(value, dict) else {},
                          value.get("timings", {}) if isinstance(value, dict) else {}):
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


def stage_seconds_from_files(stage_dir: Path) -> float:
    times = [path.stat().st_mtime for path in stage_dir.rglob("*") if path.is_file()]
    return max(times) - min(times) if times else float("nan")


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
    source = "pipeline timing file" if seconds else "stage directory file times (approximate)"
    if not seconds:
        seconds = {stage: stage_seconds_from_files(path) for stage, path in stages.items()}
    metrics = {stage: json.loads((path / "metrics.json").read_text()) for stage, path in stages.items()}
    result = {"measured": True, "run_dir": str(run_dir), "stage_dirs": {k: str(v) for k, v in stages.items()},
              "stage_seconds": seconds, "seconds_source": source}
    ppo = metrics.get("ppo", {})
    if "gold_score_ppo" in ppo and "gold_score_sft" in ppo:
        result.update(gold_score_sft=ppo["gold_score_sft"], gold_score_ppo=ppo["gold_score_ppo"],
                      gold_gain=ppo["gold_score_ppo"] - ppo["gold_score_sft"], win_rate_gold=ppo.get("win_rate_gold"))
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
        lines.append(f"Gold score: SFT {result['gold_score_sft']:.3f} -> PPO {result['gold_score_ppo']:.3f} "
                     f"(gain {result['gold_gain']:+.3f}; gold win rate of PPO over SFT "
                     f"{result.get('win_rate_gold') or float('nan'):.2f}).")
    else:
        lines.append("Gold score gain: not measured (the run's PPO metrics.json has no gold scores).")
    return "\n".join(lines)
