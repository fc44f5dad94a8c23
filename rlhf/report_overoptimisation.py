"""The report's section on best-of-N against PPO at matched KL (Gao et al. 2022): a plot, the fits, who wins where.

Both spend KL from the initial (SFT) policy on the reward model's score: best-of-N by keeping the reward model's
favourite of N samples (KL = log N − (N − 1)/N), PPO by training against it (its KL measured on held-out prompts
every `eval_steps`). Plotted against d = sqrt(KL), with Gao et al.'s forms fitted to each curve's gain over d = 0:
best-of-N R(d) = d (α − β d), RL R(d) = d (α − β log d). Where a gold curve bends down while the reward model's keeps
rising, the policy is exploiting the reward model. Reads RUN_DIR/evaluation/best_of_n.json (`python -m rlhf.evaluate
best-of-n`) and RUN_DIR/ppo/eval_metrics.jsonl; either alone is drawn; neither, and the section says how to get them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf import figures, run_files
from rlhf.evaluate.overoptimisation import GaoFit, curve_fits, interpolate, sqrt_kl
from rlhf.run_files import read_jsonl

PLOT = "best_of_n_vs_ppo.png"
SCORE_NAMES = {"gold_score": "gold score", "rm_score": "reward-model score"}
METHODS = {"best_of_n": ("best-of-N", "tab:blue", "o"), "rl": ("PPO", "tab:orange", "s")}
FORM_TEXT = {"best_of_n": "d (α − β d)", "rl": "d (α − β log d)"}


def ppo_points(rows: Sequence[dict]) -> list[dict]:
    """PPO's held-out evaluation rows as points with d = sqrt(KL) (a slightly negative KL estimate is d = 0)."""
    return [{**row, "d": sqrt_kl(row["kl"])} for row in rows if isinstance(row.get("kl"), (int, float))]


def section(run_dir: Path, out: Path) -> list[str]:
    """The Markdown lines of the section, its plot written into `out`."""
    best_of_n_file = run_files.best_of_n_path(run_dir)
    best_of_n = json.loads(best_of_n_file.read_text()) if best_of_n_file.is_file() else None
    curves = {
        "best_of_n": best_of_n["points"] if best_of_n else [],
        "rl": ppo_points(read_jsonl(run_dir / "ppo" / run_files.PPO_EVAL_METRICS)),
    }
    lines = ["## 4. Best-of-N against PPO at matched KL", ""]
    if not any(curves.values()):
        return lines + [
            "No best-of-N curve (`python -m rlhf.evaluate best-of-n --run_dir RUN_DIR`, or the pipeline's "
            "`best_of_n_max`) and no held-out PPO evaluations (PPO's `eval_steps`) in this run.",
            "",
        ]
    plot_matched_kl(curves, out / PLOT)
    gold = any("gold_score" in point for points in curves.values() for point in points)
    lines += [
        "Both spend KL from the SFT policy on the reward model's score: best-of-N keeps the reward model's "
        "favourite of N samples (KL = log N − (N − 1)/N), PPO trains against it (KL measured on held-out "
        "prompts)."
        + (
            " Where the gold curve bends down while the reward model's keeps rising, the policy is "
            "exploiting the reward model (Gao et al. 2022)."
            if gold
            else ""
        ),
        "",
        f"![Best-of-N vs PPO]({PLOT})",
        "",
    ]
    lines += _what_was_measured(best_of_n, curves["rl"])
    lines += ["### Gao et al.'s forms, fitted to each curve's gain over d = 0", "", *fits_table(curves), ""]
    comparison = comparison_table(curves["best_of_n"], curves["rl"])
    if comparison:
        lines += ["### At each PPO evaluation's KL", "", *comparison, ""]
    return lines


def _what_was_measured(best_of_n: dict | None, ppo: list[dict]) -> list[str]:
    said = []
    if best_of_n:
        said.append(
            f"Best-of-N: {best_of_n['policy']} under {best_of_n['reward_model']}, {best_of_n['prompts']} held-out "
            f"prompts with {best_of_n['samples_per_prompt']} samples each, every N the mean over all N-subsets."
        )
    else:
        said.append("No best-of-N curve in this run (`python -m rlhf.evaluate best-of-n --run_dir RUN_DIR`).")
    if ppo:
        said.append(
            f"PPO: {len(ppo)} evaluations, one sampled response to each of {ppo[0].get('prompts', '?')} "
            f"held-out prompts each."
        )
    else:
        said.append("No held-out PPO evaluations in this run (PPO's `eval_steps`).")
    return [" ".join(said), ""]


def plot_matched_kl(curves: dict[str, list[dict]], path: Path) -> Path:
    """A panel per score (gold where measured, then the reward model's) against d: each method's points and its
    fitted form, drawn from d = 0 to its largest d."""
    import numpy as np

    keys = [key for key in SCORE_NAMES if any(key in p for points in curves.values() for p in points)]
    figure, axes = figures.figure(1, len(keys), size=(6.4 * len(keys), 4.4))
    for axis, key in zip(axes[0], keys):
        for form, points in curves.items():
            # best-of-N in the order of N, PPO in the order of its steps (its path, which may turn back in KL)
            order = "d" if form == "best_of_n" else "step"
            points = sorted((p for p in points if isinstance(p.get(key), (int, float))), key=lambda p: p[order])
            if not points:
                continue
            name, color, marker = METHODS[form]
            d = [p["d"] for p in points]
            axis.plot(
                d,
                [p[key] for p in points],
                marker,
                color=color,
                label=name,
                alpha=0.85,
                linestyle="" if form == "best_of_n" else ":",
            )
            if form == "best_of_n":
                for point in points:
                    axis.annotate(
                        f"N={point['n']}",
                        (point["d"], point[key]),
                        fontsize=7,
                        xytext=(3, -9),
                        textcoords="offset points",
                    )
            fit = curve_fits(form, points).get(key)
            if fit is not None:
                baseline = min(points, key=lambda p: p["d"])[key]
                grid = np.linspace(0.0, max(d), 60)
                axis.plot(
                    grid,
                    [baseline + fit(x) for x in grid],
                    "-",
                    color=color,
                    label=f"{name} fit: {FORM_TEXT[form]}, R² {_r_squared(fit)}",
                )
        axis.set(title=SCORE_NAMES[key], xlabel="d = sqrt(KL from the SFT policy)", ylabel=SCORE_NAMES[key])
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.suptitle("Best-of-N vs PPO at matched KL")
    return figures.save_png(figure, path)


def fits_table(curves: dict[str, list[dict]]) -> list[str]:
    rows = ["| curve | form | α | β | R² | RMSE | points |", "|---|---|---:|---:|---:|---:|---:|"]
    for form, points in curves.items():
        for key, fit in curve_fits(form, points).items():
            label = f"{METHODS[form][0]}, {SCORE_NAMES[key]}"
            rows.append(
                f"| {label} | {FORM_TEXT[form]} | "
                + (_fit_cells(fit) if fit else "too few points (or no d = 0) | | | | |")
            )
    return rows if len(rows) > 2 else ["No curve has the points a fit needs."]


def _fit_cells(fit: GaoFit) -> str:
    return f"{fit.alpha:.4g} | {fit.beta:.4g} | {_r_squared(fit)} | {fit.rmse:.4f} | {fit.points} |"


def _r_squared(fit: GaoFit) -> str:
    return "–" if math.isnan(fit.r_squared) else f"{fit.r_squared:.3f}"  # NaN: every gain equal, nothing to explain


def comparison_table(best_of_n: Sequence[dict], ppo: Sequence[dict]) -> list[str]:
    """At each PPO evaluation's d, PPO's scores and best-of-N's (interpolated between its N), and which gold score is
    higher; "beyond" past best-of-N's largest N; and no winner where PPO has spent no KL (d = 0: its start, or a KL
    estimate at or below 0), where both are the SFT policy and differ by sampling noise alone. Empty without both
    curves."""
    if not best_of_n or not ppo:
        return []
    gold = any("gold_score" in p for p in best_of_n) and any("gold_score" in p for p in ppo)
    ordered = sorted(best_of_n, key=lambda p: p["d"])
    xs = [p["d"] for p in ordered]

    def at(d: float, key: str) -> float | None:
        return interpolate(d, xs, [p[key] for p in ordered]) if all(key in p for p in ordered) else None

    header = "| PPO step | KL | RM: PPO | RM: best-of-N |" + (
        " gold: PPO | gold: best-of-N | higher gold |" if gold else ""
    )
    rows = [header, "|---:|---:|---:|---:|" + ("---:|---:|---|" if gold else "")]
    wins = {"PPO": 0, "best-of-N": 0, "tie": 0}
    for point in sorted(ppo, key=lambda p: p["step"]):
        row = f"| {point['step']} | {point['kl']:.3f} | {point['rm_score']:.3f} | {_cell(at(point['d'], 'rm_score'))} |"
        if gold:
            theirs = at(point["d"], "gold_score")
            higher = (
                "KL <= 0: not compared"
                if point["d"] == 0
                else "beyond best-of-N's largest N"
                if theirs is None
                else _higher(point.get("gold_score"), theirs)
            )
            wins[higher] = wins.get(higher, 0) + 1
            row += f" {_cell(point.get('gold_score'))} | {_cell(theirs)} | {higher} |"
        rows.append(row)
    if gold:
        compared = wins["PPO"] + wins["best-of-N"] + wins["tie"]
        ties = f", tied at {wins['tie']}" if wins["tie"] else ""
        rows += [
            "",
            f"Where PPO has spent KL within best-of-N's range, PPO's gold score is higher at {wins['PPO']} "
            f"of {compared} evaluations, best-of-N's at {wins['best-of-N']}{ties}.",
        ]
    else:
        rows += ["", "These are the reward model's own scores: what it prefers, not necessarily what people do."]
    return rows


def _higher(ppo: Any, best_of_n: float) -> str:
    if not isinstance(ppo, (int, float)):
        return "–"
    return "PPO" if ppo > best_of_n else "best-of-N" if ppo < best_of_n else "tie"


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"
