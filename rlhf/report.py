"""The report a person reads after a run: plots of each stage and a Markdown summary.

    python -m rlhf.report RUN_DIR [--registry_dir DIR]

RUN_DIR holds the stages' output directories (`sft/`, `rm/`, `ppo/`, as the pipeline writes them). A stage that
has not run yet is reported as missing; the rest is still drawn. Everything lands in RUN_DIR/report/. The reward
model's calibration and labeler agreement are drawn by rlhf.report_reward_model, best-of-N against PPO at matched
KL (RUN_DIR/evaluation/best_of_n.json) by rlhf.report_overoptimisation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rlhf import figures, report_overoptimisation, report_reward_model, run_files
from rlhf.errors import DataError, exits_cleanly
from rlhf.io import atomic_write_text
from rlhf.run_files import read_jsonl as _jsonl

SAMPLES_SHOWN = 6


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# -- plots ------------------------------------------------------------------------------------------------------


def plot_sft_loss(history: list[dict], path: Path) -> Path:
    figure, axes = figures.figure()
    axis = axes[0][0]
    train = [(row["step"], row["loss"]) for row in history if "loss" in row]
    held_out = [(row["step"], row["eval_loss"]) for row in history if "eval_loss" in row]
    if train:
        axis.plot(*zip(*train), label="train loss", color="tab:blue")
    if held_out:
        axis.plot(*zip(*held_out), "o-", label="held-out loss", color="tab:orange")
    axis.set(title="SFT: loss on demonstrations", xlabel="step", ylabel="cross-entropy per token")
    axis.legend()
    axis.grid(alpha=0.3)
    return figures.save_png(figure, path)


def plot_rm_accuracy_by_k(metrics: dict, path: Path) -> Path:
    by_k = sorted(
        (int(key.rsplit("_k", 1)[1]), value)
        for key, value in metrics.items()
        if key.startswith("eval_pairwise_accuracy_k")
    )
    figure, axes = figures.figure()
    axis = axes[0][0]
    labels = [f"K={k}" for k, _ in by_k] + ["all"]
    values = [value for _, value in by_k] + [metrics.get("eval_pairwise_accuracy", float("nan"))]
    bars = axis.bar(labels, values, color=["tab:blue"] * len(by_k) + ["tab:green"])
    axis.bar_label(bars, fmt="%.2f")
    axis.axhline(0.5, color="grey", linestyle="--", label="chance")
    if "eval_pairwise_accuracy_before" in metrics:
        axis.axhline(
            metrics["eval_pairwise_accuracy_before"], color="tab:red", linestyle=":", label="before training (all)"
        )
    axis.set(
        title="Reward model: held-out pairwise accuracy by K", ylabel="pairs ordered as labelers did", ylim=(0, 1.05)
    )
    axis.legend(loc="lower right", fontsize=8)
    return figures.save_png(figure, path)


def plot_ppo_training(steps: list[dict], path: Path) -> Path:
    figure, axes = figures.figure(2, 2, size=(10, 6.5))
    panels = [
        ("rm_score", "reward-model score", "tab:blue"),
        ("gold_score", "gold score (demo)", "tab:green"),
        ("kl", "KL to the SFT policy (nats / response)", "tab:red"),
        ("beta", "β (KL coefficient)", "tab:purple"),
    ]
    for axis, (key, title, color) in zip([a for row in axes for a in row], panels):
        points = [(row["step"], row[key]) for row in steps if row.get(key) is not None]
        if points:
            axis.plot(*zip(*points), color=color)
        else:
            axis.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=axis.transAxes)
        axis.set(title=title, xlabel="PPO step")
        axis.grid(alpha=0.3)
    figure.suptitle("PPO: what the policy optimises, and what it costs")
    return figures.save_png(figure, path)


def plot_overoptimisation(steps: list[dict], path: Path, bins: int = 8) -> Path:
    """Reward-model score and gold score against KL, each step a dot and the mean per KL bin a line: when the
    RM line keeps rising while the gold line falls, the policy is exploiting the reward model (Gao et al. 2022)."""
    import numpy as np

    figure, axes = figures.figure()
    axis = axes[0][0]
    rows = [row for row in steps if row.get("kl") is not None]
    kl = np.array([row["kl"] for row in rows], dtype=float)
    edges = np.unique(np.quantile(kl, np.linspace(0, 1, bins + 1))) if len(kl) else np.array([])

    def draw(target, key, color, label):
        values = np.array([row.get(key) if row.get(key) is not None else np.nan for row in rows], dtype=float)
        target.scatter(kl, values, s=10, alpha=0.35, color=color)
        centres, means = [], []
        for low, high in zip(edges[:-1], edges[1:]):
            inside = (kl >= low) & (kl <= high) & ~np.isnan(values)
            if inside.any():
                centres.append(kl[inside].mean())
                means.append(values[inside].mean())
        return target.plot(centres, means, "o-", color=color, label=f"{label} (mean per KL bin)")

    lines = draw(axis, "rm_score", "tab:blue", "reward-model score")
    axis.set(
        xlabel="KL to the SFT policy (nats / response)",
        ylabel="reward-model score",
        title="Reward-model score vs gold score as KL grows",
    )
    if any(row.get("gold_score") is not None for row in rows):
        gold_axis = axis.twinx()
        lines += draw(gold_axis, "gold_score", "tab:green", "gold score")
        gold_axis.set_ylabel("gold score", color="tab:green")
    axis.legend(handles=lines, loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    return figures.save_png(figure, path)


def plot_response_length(steps: list[dict], path: Path) -> Path:
    figure, axes = figures.figure()
    axis = axes[0][0]
    points = [(row["step"], row["response_length"]) for row in steps if row.get("response_length") is not None]
    if points:
        axis.plot(*zip(*points), color="tab:brown")
    axis.set(title="PPO: mean response length", xlabel="PPO step", ylabel="tokens")
    axis.grid(alpha=0.3)
    return figures.save_png(figure, path)


# -- summary ------------------------------------------------------------------------------------------------------


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: dict) -> list[str]:
    """What the `overlong` policy did (a line), then every number and word of the metrics (a table)."""
    said = [f"Over-long data: {metrics['overlong']}", ""] if metrics.get("overlong") else []
    rows = ["| metric | value |", "|---|---|"]
    rows += [
        f"| {key} | {_number(value).replace('|', '/')} |"
        for key, value in sorted(metrics.items())
        if isinstance(value, (int, float, str)) and key != "overlong"
    ]
    return said + rows


def _lineage(run_dir: Path, registry_dir: str) -> list[str]:
    from rlhf.registry import Registry

    registry = Registry(registry_dir or run_dir / "registry")
    for stage in ("ppo", "rm", "sft"):
        registered = _json(run_dir / stage / run_files.REGISTERED)
        if registered and registry.has(registered["reference"]):
            return [
                f"- `{entry.reference}` ({entry.stage}), from {_origin(entry)}, made {entry.created_at}"
                for entry in registry.lineage(registered["reference"])
            ]
    return ["- nothing registered yet"]


def _origin(entry) -> str:
    return ", ".join(f"`{parent}`" for parent in entry.parents) or f"`{entry.base_model}`"


def _samples_table(samples: list[dict]) -> list[str]:
    rows = ["| prompt | SFT | PPO | gold SFT → PPO | RM SFT → PPO |", "|---|---|---|---|---|"]
    for sample in samples[:SAMPLES_SHOWN]:
        cells = [_shown(sample["prompt"], keep_end=True), _shown(sample["sft"]), _shown(sample["ppo"])]
        rows.append(f"| {' | '.join(cells)} | {_change(sample, 'gold')} | {_change(sample, 'rm')} |")
    return rows


CELL_CHARACTERS = 240


def _shown(text: Any, keep_end: bool = False) -> str:
    """A prompt or response as one table cell: a conversation as its turns ("user: ... / assistant: ..."), long
    text cut to its end (`keep_end`: a prompt's end is what the response answers) or its start, pipes escaped."""
    if isinstance(text, list):
        text = " / ".join(f"{m.get('role')}: {m.get('content')}" if isinstance(m, dict) else str(m) for m in text)
    text = " ".join(str(text).split())
    if len(text) > CELL_CHARACTERS:
        text = "…" + text[-CELL_CHARACTERS:] if keep_end else text[:CELL_CHARACTERS] + "…"
    return text.replace("|", "\\|")


def _change(sample: dict, scorer: str) -> str:
    """ "0.12 → 0.34": a sample's score under `scorer` from SFT to PPO, or "–" where it was not scored."""
    before, after = sample.get(f"{scorer}_sft"), sample.get(f"{scorer}_ppo")
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return "–"
    return f"{before:.2f} → {after:.2f}"


def _by_task_table(samples: list[dict]) -> list[str]:
    """Gold score of SFT and PPO per task (the demo's operations), and PPO's wins, losses and ties against SFT:
    where RLHF helped and where it did not. Empty when the samples carry no task or no gold score."""
    by_task: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        if sample.get("task") is not None and sample.get("gold_sft") is not None:
            by_task.setdefault(sample["task"], []).append((sample["gold_sft"], sample["gold_ppo"]))
    if not by_task:
        return []
    rows = ["| task | responses | gold SFT | gold PPO | wins / losses / ties |", "|---|---:|---:|---:|---|"]
    for task, pairs in sorted(by_task.items()):
        wins = sum(ppo > sft for sft, ppo in pairs)
        losses = sum(ppo < sft for sft, ppo in pairs)
        sft_mean, ppo_mean = (sum(column) / len(pairs) for column in zip(*pairs))
        rows.append(
            f"| {task} | {len(pairs)} | {sft_mean:.2f} | {ppo_mean:.2f} | "
            f"{wins} / {losses} / {len(pairs) - wins - losses} |"
        )
    return rows


TIMED_PHASES = (
    ("generation", "time_generation"),
    ("scoring", "time_scoring"),
    ("update", "time_training"),
    ("weight sync", "time_weight_sync"),
)  # the last with rollout_engine vllm only


def _time_table(steps: list[dict]) -> list[str]:
    """Seconds per PPO step in each phase (mean over steps) and its share of the step. Empty without timings."""
    means = {}
    for phase, key in TIMED_PHASES:
        values = [row[key] for row in steps if isinstance(row.get(key), (int, float))]
        if values:
            means[phase] = sum(values) / len(values)
    total = sum(means.values())
    if not means or total <= 0:
        return []
    rows = ["| phase | seconds per step | share |", "|---|---:|---:|"]
    rows += [f"| {phase} | {seconds:.3g} | {seconds / total:.0%} |" for phase, seconds in means.items()]
    return rows


def write_report(run_dir: str | Path, registry_dir: str = "") -> Path:
    """Write RUN_DIR/report/{*.png, report.md}; returns the Markdown file's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError("no such run directory", file=str(run_dir))
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# RLHF run: `{run_dir}`",
        "",
        "## Lineage",
        "",
        *_lineage(run_dir, registry_dir),
        "",
        *_sft_section(run_dir, out),
        *_rm_section(run_dir, out),
        *_ppo_section(run_dir, out),
        *report_overoptimisation.section(run_dir, out),
    ]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


def _sft_section(run_dir: Path, out: Path) -> list[str]:
    metrics = _json(run_dir / "sft" / run_files.METRICS)
    if metrics is None:
        return ["## 1. SFT", "", "Not run yet.", ""]
    plot_sft_loss(_jsonl(run_dir / "sft" / run_files.LOG_HISTORY), out / "sft_loss.png")
    return ["## 1. SFT", "", "![SFT loss](sft_loss.png)", "", *_metrics_table(metrics), ""]


def _rm_section(run_dir: Path, out: Path) -> list[str]:
    metrics = _json(run_dir / "rm" / run_files.METRICS)
    if metrics is None:
        return ["## 2. Reward model", "", "Not run yet.", ""]
    plot_rm_accuracy_by_k(metrics, out / "rm_accuracy_by_k.png")
    return [
        "## 2. Reward model",
        "",
        "![Reward-model accuracy by K](rm_accuracy_by_k.png)",
        "",
        *report_reward_model.ensemble_lines(metrics),
        *_metrics_table(metrics),
        "",
        *report_reward_model.calibration_lines(run_dir, out),
        *report_reward_model.agreement_lines(run_dir, metrics),
    ]


def _ppo_section(run_dir: Path, out: Path) -> list[str]:
    metrics = _json(run_dir / "ppo" / run_files.METRICS)
    steps = _jsonl(run_dir / "ppo" / run_files.PPO_METRICS)
    if metrics is None and not steps:
        return ["## 3. PPO", "", "Not run yet.", ""]
    plot_ppo_training(steps, out / "ppo_training.png")
    plot_overoptimisation(steps, out / "ppo_rm_vs_gold_by_kl.png")
    plot_response_length(steps, out / "ppo_response_length.png")
    lines = [
        "## 3. PPO",
        "",
        "![PPO training](ppo_training.png)",
        "",
        "![RM vs gold by KL](ppo_rm_vs_gold_by_kl.png)",
        "",
        "![Response length](ppo_response_length.png)",
        "",
    ]
    if metrics:
        lines += _estimator_line(metrics) + _reward_line(metrics, steps)
        if isinstance(metrics.get("win_rate_rm"), (int, float)):
            win = [
                f"**Win rate of PPO over SFT** on {metrics.get('eval_prompts', '?')} held-out prompts: "
                f"{metrics['win_rate_rm']:.1%} under the reward model"
            ]
            if isinstance(metrics.get("win_rate_gold"), (int, float)):
                win.append(f", {metrics['win_rate_gold']:.1%} under the gold scorer")
            lines += ["".join(win) + " (ties count half).", ""]
        else:
            lines += ["No held-out prompts (`eval_prompts_file`): no win rate against SFT.", ""]
        lines += [*_metrics_table(metrics), ""]
        if isinstance(metrics.get("win_rate_gold_greedy"), (int, float)):
            lines += [
                f"**Greedy responses** (InstructGPT's other claim): PPO wins {metrics['win_rate_gold_greedy']:.1%} "
                f"under the gold scorer; gold {metrics['gold_score_sft_greedy']:.3f} (SFT) → "
                f"{metrics['gold_score_ppo_greedy']:.3f} (PPO).",
                "",
            ]
    samples = _json(run_dir / "ppo" / run_files.PPO_SAMPLES) or []
    by_task = _by_task_table(samples)
    if by_task:
        lines += ["### Gold score by task", "", *by_task, ""]
    times = _time_table(steps)
    if times:
        lines += ["### Time per step", "", *times, ""]
    if samples:
        lines += ["### Samples on held-out prompts", "", *_samples_table(samples), ""]
    return lines


def _estimator_line(metrics: dict) -> list[str]:
    """Which advantage estimator ran, with how many responses per prompt and where the KL went; nothing for a run
    that predates the estimators (it was GAE)."""
    estimator = metrics.get("advantage_estimator")
    if not estimator:
        return []
    models = "with a critic (four models)" if estimator == "gae" else "without a critic (three models)"
    kl = "a loss term (k3)" if metrics.get("kl_in_loss") else "a per-token penalty in the reward"
    return [
        f"**Advantages**: `{estimator}` {models}, {metrics.get('samples_per_prompt', 1)} response(s) per "
        f"prompt; the KL to the SFT policy is {kl}.",
        "",
    ]


def _reward_line(metrics: dict, steps: list[dict]) -> list[str]:
    """What PPO's reward was made of: one reward model, or an ensemble's members aggregated, with how much they
    disagreed on the policy's responses at the start and at the end."""
    members = metrics.get("reward_members", 1)
    if not isinstance(members, int) or members <= 1:
        return []
    method = metrics.get("reward_aggregation", "mean")
    made = {
        "mean": "their mean",
        "min": "their minimum (worst case)",
        "mean_minus_std": f"their mean − {metrics.get('uncertainty_coef', '?')} × their std",
    }.get(method, method)
    disagreement = [row["rm_score_std"] for row in steps if isinstance(row.get("rm_score_std"), (int, float))]
    spread = (
        f"; the members' std on the policy's responses went from {disagreement[0]:.3f} (first step) to "
        f"{disagreement[-1]:.3f} (last)"
        if disagreement
        else ""
    )
    return [f"**Reward**: an ensemble of {members} reward models, `reward_aggregation: {method}`: {made}{spread}.", ""]


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the pipeline's run directory (holding sft/, rm/, ppo/)")
    parser.add_argument("--registry_dir", default="", help="registry (default: RUN_DIR/registry)")
    args = parser.parse_args(argv)
    print(f"report: {write_report(args.run_dir, args.registry_dir)}")


if __name__ == "__main__":
    main()
