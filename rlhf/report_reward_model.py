"""The report's reward-model parts beyond accuracy: an ensemble's members, its calibration, and how much its labelers
agree.

- Ensemble (`ensemble_size` > 1): each member's held-out accuracy beside their mean's, how much they disagree, and
  how their weight average (PPO's critic start) scores.
- Calibration: the reliability diagram of the held-out pairs' σ(r_i − r_j) against the labels (rm/calibration.json,
  written by the RM stage's evaluation; rlhf.rm.calibration), with its ECE; an ensemble's is its members' mean's,
  with their spread against the mean's error rate.
- Labeler agreement: on the rankings the reward model was trained on (its resolved config's train_file and
  eval_file, where they are local files), where several annotators ranked the same responses
  (rlhf.labels.agreement), beside the reward model's held-out pairwise accuracy: labels that agree with each other
  x% of the time are about the most a model learned from them can agree with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhf import figures, run_files
from rlhf.errors import DataError

CALIBRATION_PLOT = "rm_calibration.png"
UNCERTAINTY_PLOT = "rm_uncertainty.png"
ANNOTATORS_SHOWN = 10


def plot_calibration(calibration: dict[str, Any], path: Path) -> Path:
    """Each bin's frequency (how often the predicted ordering holds in the labels) at its mean prediction, against
    the diagonal of perfect calibration, with the pairs per bin below."""
    figure, axes = figures.figure(2, 1, size=(6.0, 6.0))
    axis, counts = axes[0][0], axes[1][0]
    bins = [b for b in calibration["bins"] if b["pairs"]]
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    axis.bar(
        [(b["low"] + b["high"]) / 2 for b in bins],
        [b["frequency"] for b in bins],
        width=0.09,
        color="tab:blue",
        alpha=0.35,
        label="labels agree (per bin)",
    )
    axis.plot(
        [b["mean_probability"] for b in bins],
        [b["frequency"] for b in bins],
        "o-",
        color="tab:blue",
        label="at the bin's mean prediction",
    )
    axis.set(
        title=f"Reward model calibration on held-out pairs (ECE {calibration['ece']:.3f})",
        xlabel="predicted σ(r_i − r_j)",
        ylabel="share of pairs the labels order i above j",
        xlim=(0, 1),
        ylim=(0, 1.03),
    )
    axis.legend(fontsize=8, loc="upper left")
    axis.grid(alpha=0.3)
    counts.bar(
        [(b["low"] + b["high"]) / 2 for b in calibration["bins"]],
        [b["pairs"] for b in calibration["bins"]],
        width=0.09,
        color="grey",
    )
    counts.set(xlabel="predicted σ(r_i − r_j)", ylabel="predictions", xlim=(0, 1))
    return figures.save_png(figure, path)


def ensemble_lines(metrics: dict[str, Any]) -> list[str]:
    """An ensemble's members and how much they disagree; nothing for one reward model."""
    members = metrics.get("eval_member_pairwise_accuracy")
    if not metrics.get("ensemble_size", 1) > 1 or not isinstance(members, list):
        return []

    def number(key, form=".3f"):
        value = metrics.get(key)
        return format(value, form) if isinstance(value, (int, float)) else "?"

    return [
        "### Ensemble",
        "",
        f"{metrics['ensemble_size']} reward models, each trained alone with its own seed (its head's "
        f"initialisation and its data order) and its own zero at the demonstrations' mean; PPO combines their "
        f"scores by its `reward_aggregation`, every other reader takes their mean.",
        "",
        "| | held-out pairwise accuracy |",
        "|---|---:|",
        *[f"| member {index} | {value:.3f} |" for index, value in enumerate(members)],
        f"| **their mean** | **{number('eval_pairwise_accuracy')}** |",
        f"| their weight average (PPO's critic start) | {number('eval_averaged_pairwise_accuracy')} |",
        "",
        f"Disagreement on the held-out responses: the members' std is {number('eval_ensemble_std')} on average, "
        f"{number('eval_ensemble_relative_std', '.2f')} of the spread of their mean over the responses. The "
        f"weight average's scores correlate with the members' mean at "
        f"{number('eval_averaged_mean_correlation')}.",
        "",
    ]


def plot_uncertainty(uncertainty: list[dict[str, Any]], path: Path) -> Path:
    """The mean's error rate against the members' std of the margin, one point per bin of equal count."""
    figure, axes = figures.figure(1, 1, size=(6.0, 4.0))
    axis = axes[0][0]
    axis.plot([b["mean_std"] for b in uncertainty], [b["error_rate"] for b in uncertainty], "o-", color="tab:red")
    axis.set(
        title="Ensemble: disagreement against error on held-out pairs",
        xlabel="members' std of r_better − r_worse (bin mean)",
        ylabel="share the members' mean orders wrong",
        ylim=(0, max([0.55] + [b["error_rate"] + 0.05 for b in uncertainty])),
    )
    axis.grid(alpha=0.3)
    return figures.save_png(figure, path)


def calibration_lines(run_dir: Path, out: Path) -> list[str]:
    calibration_file = run_dir / "rm" / run_files.RM_CALIBRATION
    if not calibration_file.is_file():
        return []
    calibration = json.loads(calibration_file.read_text())
    plot_calibration(calibration, out / CALIBRATION_PLOT)
    uncertainty = calibration.get("uncertainty")
    whose = "the ensemble's mean reward" if uncertainty else "the reward model's"
    lines = [
        "### Calibration",
        "",
        f"Every held-out pair of ranked responses, both ways round: {whose} σ(r_i − r_j) against how "
        f"often the labels put i above j (a tie counts half), in 10 bins; {calibration['pairs']} pairs, expected "
        f"calibration error {calibration['ece']:.3f} (0: the reward model's confidence is right).",
        "",
        f"![Reward-model calibration]({CALIBRATION_PLOT})",
        "",
    ]
    if not uncertainty:
        return lines
    plot_uncertainty(uncertainty, out / UNCERTAINTY_PLOT)
    return lines + [
        "Does the members' disagreement say where their mean is wrong (Coste et al. 2023)? Each pair the labels "
        "order, by the members' (population) std of its margin r_better − r_worse, in bins of equal count, against "
        "how often the members' mean orders it against the labels (a tie: half). Useful disagreement rises with the "
        "error rate.",
        "",
        "| bin | pairs | members' std | error rate of the mean |",
        "|---:|---:|---:|---:|",
        *[
            f"| {index + 1} | {b['pairs']} | {b['mean_std']:.3f} | {b['error_rate']:.3f} |"
            for index, b in enumerate(uncertainty)
        ],
        "",
        f"![Ensemble disagreement against error]({UNCERTAINTY_PLOT})",
        "",
    ]


def training_labels(run_dir: Path) -> list[Path]:
    """The local rankings files the reward model read (train_file, eval_file of rm/resolved_config.yaml)."""
    import yaml

    resolved = run_dir / "rm" / run_files.RESOLVED_CONFIG
    if not resolved.is_file():
        return []
    config = yaml.safe_load(resolved.read_text()) or {}
    return [Path(config[key]) for key in ("train_file", "eval_file") if config.get(key) and Path(config[key]).is_file()]


def agreement_lines(run_dir: Path, metrics: dict[str, Any]) -> list[str]:
    """The labelers' agreement where several ranked the same responses, beside the reward model's accuracy."""
    from rlhf.data.rankings import read_rankings
    from rlhf.labels.agreement import labeler_agreement

    files = training_labels(run_dir)
    if not files:
        return []
    try:
        rankings = [ranking for path in files for ranking in read_rankings(path)]
    except DataError as error:
        return ["### Labeler agreement", "", f"The labels could not be read: {error}", ""]
    if not any(ranking.annotator for ranking in rankings):
        return []  # no annotator ids: nothing to say who agrees with whom
    agreement = labeler_agreement(rankings)
    if not agreement.shared_pairs:
        return [
            "### Labeler agreement",
            "",
            "No two annotators ranked the same responses to a prompt, so their "
            "agreement is not measured (on the demo, `label_overlap` sets the share of prompts two labelers "
            "rank).",
            "",
        ]
    accuracy = metrics.get("eval_pairwise_accuracy")
    lines = [
        "### Labeler agreement",
        "",
        f"Where two or more annotators ranked the same responses ({agreement.sets} prompts, "
        f"{agreement.shared_pairs} response pairs compared between two annotators), they order a pair alike "
        f"**{agreement.pairwise:.1%}** of the time (one tying what the other orders counts half); Krippendorff's "
        f"α (ordinal) is {agreement.alpha:.3f}.",
    ]
    if isinstance(accuracy, (int, float)):
        lines.append(
            f"The reward model orders held-out pairs as the labels do **{accuracy:.1%}** of the time: "
            f"labels that agree with each other {agreement.pairwise:.1%} of the time are about the most a "
            f"model learned from them can agree with them."
        )
    lines += ["", "| annotator | agreement with the others | pairs |", "|---|---:|---:|"]
    people = list(agreement.by_annotator.items())
    lines += [f"| {name} | {value:.3f} | {pairs} |" for name, (value, pairs) in people[:ANNOTATORS_SHOWN]]
    if len(people) > ANNOTATORS_SHOWN:
        lines.append(f"| … {len(people) - ANNOTATORS_SHOWN} more | | |")
    return lines + [""]
