"""The report: every plot is a real PNG, and the summary's numbers are the metrics files' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.evaluate.overoptimisation import best_of_n_kl
from rlhf.registry import Registry
from rlhf.report import _number, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, list) and path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in value))
    else:
        path.write_text(json.dumps(value))


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    registry = Registry(run / "registry")
    sft = registry.register("sft", "sft", _model_dir(tmp_path / "m1"), base_model="base")
    rm = registry.register("rm", "rm", _model_dir(tmp_path / "m2"), parents=[sft.reference])
    ppo = registry.register("ppo", "ppo", _model_dir(tmp_path / "m3"), parents=[sft.reference, rm.reference])
    for stage, entry in (("sft", sft), ("rm", rm), ("ppo", ppo)):
        _write(run / stage / "registered.json", {"reference": entry.reference, "path": entry.path})
    _write(
        run / "sft" / "log_history.jsonl",
        [
            {"step": 0, "eval_loss": 3.8},
            {"step": 10, "loss": 2.0},
            {"step": 20, "loss": 1.1},
            {"step": 20, "eval_loss": 1.3},
        ],
    )
    _write(run / "sft" / "metrics.json", {"eval_loss_before": 3.8, "eval_loss_after": 1.3, "gold_score_after": 0.97})
    _write(
        run / "rm" / "metrics.json",
        {
            "eval_pairwise_accuracy": 0.6889,
            "eval_pairwise_accuracy_k2": 0.9143,
            "eval_pairwise_accuracy_k4": 0.6449,
            "eval_pairwise_accuracy_before": 0.51,
            "gold_agreement": 0.7345,
        },
    )
    steps = [
        {
            "step": s,
            "rm_score": 0.1 * s,
            "gold_score": 0.7 + 0.02 * s,
            "kl": 0.05 * s,
            "beta": 0.1,
            "response_length": 6 - 0.1 * s,
            "time_generation": 3.0 if s % 2 else 1.0,
            "time_scoring": 0.5,
            "time_training": 1.5,
        }
        for s in range(1, 11)
    ]
    _write(run / "ppo" / "ppo_metrics.jsonl", steps)
    _write(
        run / "ppo" / "metrics.json",
        {
            "win_rate_rm": 0.7075,
            "win_rate_gold": 0.63625,
            "eval_prompts": 100,
            "kl_final": 1.4853,
            "gold_score_sft": 0.7287,
            "gold_score_ppo": 0.8902,
        },
    )
    sample = {"rm_sft": 0.0, "rm_ppo": 0.0}
    _write(
        run / "ppo" / "samples.json",
        [
            {
                "prompt": "sort b a answer :",
                "sft": "ok : a b",
                "ppo": "a b",
                "rm_sft": -0.5,
                "rm_ppo": 1.2,
                "gold_sft": 0.8,
                "gold_ppo": 1.0,
                "task": "sort",
            },
            {
                **sample,
                "prompt": "sort c a answer :",
                "sft": "a c",
                "ppo": "a c",
                "gold_sft": 1.0,
                "gold_ppo": 1.0,
                "task": "sort",
            },
            {
                **sample,
                "prompt": "sort d a answer :",
                "sft": "a d",
                "ppo": "d",
                "gold_sft": 1.0,
                "gold_ppo": 0.5,
                "task": "sort",
            },
            {
                **sample,
                "prompt": "say the last word of : a b answer :",
                "sft": "a",
                "ppo": "b",
                "gold_sft": 0.0,
                "gold_ppo": 1.0,
                "task": "last",
            },
        ],
    )
    _write_reward_model_extras(run)
    _write_matched_kl_curves(run)
    return run


def _write_reward_model_extras(run: Path) -> None:
    """The RM's calibration bins (ECE 0.2834 by hand in tests/rm/test_calibration.py) and the labels it read, where
    three annotators overlap as in tests/labels/test_agreement.py (pairwise 0.6, α 194/1001)."""
    from rlhf.data.rankings import write_rankings
    from rlhf.rm.calibration import calibration

    _write(run / "rm" / "calibration.json", calibration([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]], [[1, 2], [1, 2], [2, 1]]))
    (run / "labels").mkdir()
    write_rankings(run / "labels" / "rankings.jsonl", _overlapping_rankings())
    (run / "rm" / "resolved_config.yaml").write_text(f"train_file: {run / 'labels' / 'rankings.jsonl'}\n")


def _overlapping_rankings(overlap: bool = True):
    from rlhf.data.rankings import Ranking

    p1, p2 = "sort these words : b a answer :", "reverse these words : a b answer :"
    rankings = [Ranking("1", p1, ("x", "y", "z"), (1, 2, 3), "alice"), Ranking("5", p2, ("u", "v"), (1, 2), "alice")]
    if overlap:
        rankings += [
            Ranking("2", p1, ("z", "x", "y"), (2, 1, 3), "bob"),
            Ranking("3", p1, ("x", "y", "z"), (1, 1, 2), "carol"),
            Ranking("6", p2, ("u", "v"), (2, 1), "bob"),
        ]
    return rankings


KL2, KL4 = best_of_n_kl(2), best_of_n_kl(4)


def _write_matched_kl_curves(run: Path, gold: bool = True) -> None:
    """Best-of-N at N = 1, 2, 4, and PPO evaluated at the KL of N = 1, 2, 4 and beyond."""
    bon = [(1, 0.0, 0.1, 0.70), (2, KL2, 0.5, 0.80), (4, KL4, 0.9, 0.85)]
    points = [
        {"n": n, "kl": kl, "d": kl**0.5, "rm_score": rm, **({"gold_score": g} if gold else {})} for n, kl, rm, g in bon
    ]
    _write(
        run / "evaluation" / "best_of_n.json",
        {
            "policy": "sft@1",
            "reward_model": "rm@1",
            "prompts": 32,
            "samples_per_prompt": 4,
            "gold_scorer": "demo" if gold else None,
            "points": points,
        },
    )
    ppo = [(0, 0.0, 0.1, 0.70), (5, KL2, 0.6, 0.75), (10, KL4, 1.2, 0.90), (12, KL2, 0.5, 0.80), (15, 2.0, 2.0, 0.60)]
    _write(
        run / "ppo" / "eval_metrics.jsonl",
        [
            {"step": step, "kl": kl, "rm_score": rm, "prompts": 16, **({"gold_score": g} if gold else {})}
            for step, kl, rm, g in ppo
        ],
    )


def test_report_draws_every_plot_as_a_png_a_person_can_open(run_dir):
    import matplotlib.image

    report = write_report(run_dir)
    names = {
        "sft_loss.png",
        "rm_accuracy_by_k.png",
        "ppo_training.png",
        "ppo_rm_vs_gold_by_kl.png",
        "ppo_response_length.png",
        "rm_calibration.png",
        "best_of_n_vs_ppo.png",
    }
    assert names <= {p.name for p in report.parent.iterdir()}
    for name in names:
        path = report.parent / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 300 and width > 500
        assert f"]({name})" in report.read_text()  # and the summary shows it


def test_summary_numbers_are_the_metrics_files_numbers(run_dir):
    text = write_report(run_dir).read_text()
    for stage in ("sft", "rm", "ppo"):
        for key, value in json.loads((run_dir / stage / "metrics.json").read_text()).items():
            assert f"| {key} | {_number(value)} |" in text
    assert "70.8% under the reward model, 63.6% under the gold scorer" in text
    assert "on 100 held-out prompts" in text
    lineage = text.split("## Lineage")[1].split("##")[0]
    assert [line.split("`")[1] for line in lineage.strip().splitlines()] == ["ppo@1", "sft@1", "rm@1"]
    assert "| sort b a answer : | ok : a b | a b | 0.80 → 1.00 | -0.50 → 1.20 |" in text


def test_a_run_that_stopped_after_sft_reports_what_exists(run_dir):
    import shutil

    shutil.rmtree(run_dir / "rm")
    shutil.rmtree(run_dir / "ppo")
    report = write_report(run_dir)
    text = report.read_text()
    assert text.count("Not run yet.") == 2
    assert (report.parent / "sft_loss.png").is_file() and not (report.parent / "ppo_training.png").exists()
    assert "`sft@1`" in text


def test_report_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    from rlhf.report import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such run directory"


def test_gold_by_task_and_time_per_phase_tables_by_hand(run_dir):
    text = write_report(run_dir).read_text()
    # sort: SFT 0.8, 1.0, 1.0 -> 0.93; PPO 1.0, 1.0, 0.5 -> 0.83; one win, one loss, one tie.
    assert "| last | 1 | 0.00 | 1.00 | 1 / 0 / 0 |" in text
    assert "| sort | 3 | 0.93 | 0.83 | 1 / 1 / 1 |" in text
    # generation: 3 s on odd steps, 1 s on even ones, mean 2 s of a 4 s step.
    assert "| generation | 2 | 50% |" in text
    assert "| scoring | 0.5 | 12% |" in text
    assert "| update | 1.5 | 38% |" in text


def test_calibration_and_labeler_agreement_beside_the_reward_models_accuracy(run_dir):
    text = write_report(run_dir).read_text()
    assert "3 pairs, expected calibration error 0.283" in text
    assert "(2 prompts, 10 response pairs compared between two annotators), they order a pair alike **60.0%**" in text
    assert "Krippendorff's α (ordinal) is 0.194" in text
    assert "The reward model orders held-out pairs as the labels do **68.9%** of the time" in text
    assert "| alice | 0.643 | 7 |" in text and "| carol | 0.667 | 6 |" in text


def test_best_of_n_against_ppo_at_each_ppo_evaluations_kl_by_hand(run_dir):
    text = write_report(run_dir).read_text()
    section = text.split("## 4. Best-of-N against PPO at matched KL")[1]
    # PPO at the KL of N = 1, 2 and 4: no KL spent yet, best-of-N, PPO; at KL 2 it is past N = 4, the largest N.
    assert "| 0 | 0.000 | 0.100 | 0.100 | 0.700 | 0.700 | KL <= 0: not compared |" in section
    assert "| 5 | 0.193 | 0.600 | 0.500 | 0.750 | 0.800 | best-of-N |" in section
    assert "| 10 | 0.636 | 1.200 | 0.900 | 0.900 | 0.850 | PPO |" in section
    assert "| 15 | 2.000 | 2.000 | – | 0.600 | – | beyond best-of-N's largest N |" in section
    assert "| 12 | 0.193 | 0.500 | 0.500 | 0.800 | 0.800 | tie |" in section
    assert "PPO's gold score is higher at 1 of 3 evaluations, best-of-N's at 1, tied at 1." in section
    assert "32 held-out prompts with 4 samples each" in section and "5 evaluations" in section
    for curve in (
        "best-of-N, gold score",
        "best-of-N, reward-model score",
        "PPO, gold score",
        "PPO, reward-model score",
    ):
        assert f"| {curve} |" in section


def test_the_fits_table_of_exact_gao_curves():
    from rlhf.evaluate.overoptimisation import gao_best_of_n, gao_rl
    from rlhf.report_overoptimisation import fits_table

    bon = [{"d": d, "rm_score": 0.5 + gao_best_of_n(d, 1.0, 0.25)} for d in (0.0, 0.5, 1.0, 2.0)]
    rl = [{"d": d, "rm_score": -1.0 + gao_rl(d, 2.0, 1.0)} for d in (0.0, 1.0, 2.718281828459045)]
    assert fits_table({"best_of_n": bon, "rl": rl}) == [
        "| curve | form | α | β | R² | RMSE | points |",
        "|---|---|---:|---:|---:|---:|---:|",
        "| best-of-N, reward-model score | d (α − β d) | 1 | 0.25 | 1.000 | 0.0000 | 3 |",
        "| PPO, reward-model score | d (α − β log d) | 2 | 1 | 1.000 | 0.0000 | 2 |",
    ]
    assert fits_table({"best_of_n": bon[1:], "rl": []})[-1].endswith("too few points (or no d = 0) | | | | |")


# -- the report on every run shape ----------------------------------------------------------------------------------


def _metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


def _without_gold(run: Path) -> str:
    """A user's run: no gold scorer anywhere, chat prompts, and data over max_length dropped."""
    _write(
        run / "sft" / "metrics.json",
        {
            "eval_loss_before": 3.8,
            "eval_loss_after": 1.3,
            "overlong": "sft.jsonl: 2 of 9 demonstrations are over max_length 256: "
            "2 dropped (ids in sft/overlong.jsonl)",
        },
    )
    _write(run / "rm" / "metrics.json", {"eval_pairwise_accuracy": 0.6, "eval_pairwise_accuracy_k2": 0.6})
    steps = [{"step": s, "rm_score": 0.1 * s, "kl": 0.05 * s, "beta": 0.1, "response_length": 6.0} for s in range(1, 4)]
    _write(run / "ppo" / "ppo_metrics.jsonl", steps)
    _write(run / "ppo" / "metrics.json", {"win_rate_rm": 0.625, "eval_prompts": 8, "kl_final": 0.15})
    _write_matched_kl_curves(run, gold=False)
    chat = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Flour."},
        {"role": "user", "content": "And | yeast?"},
    ]
    _write(
        run / "ppo" / "samples.json",
        [
            {
                "prompt": chat,
                "sft": "Use it.",
                "ppo": "Add the yeast.",
                "rm_sft": -0.25,
                "rm_ppo": 0.75,
                "gold_sft": None,
                "gold_ppo": None,
                "task": None,
            }
        ],
    )
    return (
        "| user: How do I bake bread? / assistant: Flour. / user: And \\| yeast? | Use it. | Add the yeast. | – | "
        "-0.25 → 0.75 |"
    )


def _without_ppo(run: Path) -> str:
    import shutil

    shutil.rmtree(run / "ppo")
    return "## 3. PPO\n\nNot run yet."


def _pairs_only(run: Path) -> str:
    _write(
        run / "rm" / "metrics.json",
        {"eval_pairwise_accuracy": 0.7, "eval_pairwise_accuracy_k2": 0.7, "eval_pairwise_accuracy_before": 0.5},
    )
    return "| eval_pairwise_accuracy_k2 | 0.7 |"


def _lora(run: Path) -> str:
    metrics = {**_metrics(run, "sft"), "trainable_params": 4096, "total_params": 180000}
    _write(run / "sft" / "metrics.json", metrics)
    return "| trainable_params | 4096 |"


def _hub_dataset(run: Path) -> str:
    """Models and data named on the hub: the lineage starts at a hub id, the data files are hub references."""
    import shutil

    shutil.rmtree(run / "registry")
    registry = Registry(run / "registry")
    sft = registry.register(
        "sft",
        "sft",
        _model_dir(run.parent / "h1"),
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        config={"train_file": "trl-lib/tldr:train"},
    )
    rm = registry.register(
        "rm",
        "rm",
        _model_dir(run.parent / "h2"),
        parents=[sft.reference],
        config={"train_file": "trl-lib/ultrafeedback_binarized:train"},
    )
    ppo = registry.register("ppo", "ppo", _model_dir(run.parent / "h3"), parents=[sft.reference, rm.reference])
    for stage, entry in (("sft", sft), ("rm", rm), ("ppo", ppo)):
        _write(run / stage / "registered.json", {"reference": entry.reference, "path": entry.path})
    return "from `Qwen/Qwen2.5-0.5B-Instruct`"


def _no_labeler_overlap(run: Path) -> str:
    from rlhf.data.rankings import write_rankings

    write_rankings(run / "labels" / "rankings.jsonl", _overlapping_rankings(overlap=False))
    return "No two annotators ranked the same responses to a prompt"


def _labels_without_annotators(run: Path) -> str:
    import dataclasses

    from rlhf.data.rankings import write_rankings

    write_rankings(
        run / "labels" / "rankings.jsonl", [dataclasses.replace(r, annotator=None) for r in _overlapping_rankings()]
    )
    return "### Calibration"


def _no_best_of_n_or_ppo_evaluations(run: Path) -> str:
    import shutil

    shutil.rmtree(run / "evaluation")
    (run / "ppo" / "eval_metrics.jsonl").unlink()
    return "No best-of-N curve (`python -m rlhf.evaluate best-of-n --run_dir RUN_DIR`"


def _best_of_n_alone(run: Path) -> str:
    (run / "ppo" / "eval_metrics.jsonl").unlink()
    return "No held-out PPO evaluations in this run (PPO's `eval_steps`)."


def _no_held_out_prompts(run: Path) -> str:
    _write(run / "ppo" / "metrics.json", {"steps": 10, "skipped_updates": 0, "kl_final": 0.5})
    (run / "ppo" / "samples.json").unlink()
    return "No held-out prompts (`eval_prompts_file`): no win rate against SFT."


@pytest.mark.parametrize(
    "shape",
    [
        _without_gold,
        _without_ppo,
        _pairs_only,
        _lora,
        _hub_dataset,
        _no_held_out_prompts,
        _no_labeler_overlap,
        _labels_without_annotators,
        _no_best_of_n_or_ppo_evaluations,
        _best_of_n_alone,
    ],
    ids=lambda shape: shape.__name__.strip("_"),
)
def test_the_report_is_written_for_every_run_shape(run_dir, shape):
    expected = shape(run_dir)
    report = write_report(run_dir)
    text = report.read_text()
    assert expected in text
    assert text.count("](") == len([p for p in report.parent.iterdir() if p.suffix == ".png"])
    for png in report.parent.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    if shape is _without_gold:
        assert "gold scorer" not in text and "Over-long data: sft.jsonl: 2 of 9 demonstrations" in text
        assert "gold: PPO" not in text and "| 5 | 0.193 | 0.600 | 0.500 |" in text  # the RM's columns only
    if shape is _labels_without_annotators:
        assert "Labeler agreement" not in text
    if shape is _no_best_of_n_or_ppo_evaluations:
        assert not (report.parent / "best_of_n_vs_ppo.png").exists()


def test_the_report_says_which_advantage_estimator_ran(run_dir):
    assert "**Advantages**" not in write_report(run_dir).read_text()  # a run from before the estimators: no claim
    metrics = json.loads((run_dir / "ppo" / "metrics.json").read_text())
    _write(
        run_dir / "ppo" / "metrics.json",
        {**metrics, "advantage_estimator": "grpo", "samples_per_prompt": 4, "kl_in_loss": True},
    )
    assert (
        "**Advantages**: `grpo` without a critic (three models), 4 response(s) per prompt; the KL to the SFT "
        "policy is a loss term (k3)."
    ) in write_report(run_dir).read_text()
    _write(
        run_dir / "ppo" / "metrics.json",
        {**metrics, "advantage_estimator": "gae", "samples_per_prompt": 1, "kl_in_loss": False},
    )
    assert (
        "**Advantages**: `gae` with a critic (four models), 1 response(s) per prompt; the KL to the SFT policy "
        "is a per-token penalty in the reward."
    ) in write_report(run_dir).read_text()


def test_an_ensembles_members_disagreement_and_ppos_aggregation_are_reported(run_dir):
    from rlhf.rm.calibration import calibration

    text = write_report(run_dir).read_text()
    assert "### Ensemble" not in text and "**Reward**" not in text  # one reward model: nothing claimed
    metrics = json.loads((run_dir / "rm" / "metrics.json").read_text())
    _write(
        run_dir / "rm" / "metrics.json",
        {
            **metrics,
            "ensemble_size": 2,
            "eval_member_pairwise_accuracy": [0.6667, 0.6],
            "eval_ensemble_std": 0.25,
            "eval_ensemble_relative_std": 0.5,
            "eval_averaged_pairwise_accuracy": 0.65,
            "eval_averaged_mean_correlation": 0.99,
        },
    )
    # One pair ranked 1 > 2: member 0's margin 2 - 0 = 2, member 1's 0 - 1 = -1; the mean's 0.5 orders it right,
    # and the members' population std of the margin is |2 - (-1)| / 2 = 1.5.
    _write(
        run_dir / "rm" / "calibration.json", calibration(None, [[1, 2]], member_rewards=[[[2.0, 0.0]], [[0.0, 1.0]]])
    )
    ppo = json.loads((run_dir / "ppo" / "metrics.json").read_text())
    _write(
        run_dir / "ppo" / "metrics.json",
        {**ppo, "reward_members": 2, "reward_aggregation": "mean_minus_std", "uncertainty_coef": 0.5},
    )
    steps = [
        {**json.loads(line), "rm_score_std": 0.5 - 0.01 * json.loads(line)["step"]}
        for line in (run_dir / "ppo" / "ppo_metrics.jsonl").read_text().splitlines()
    ]
    _write(run_dir / "ppo" / "ppo_metrics.jsonl", steps)

    text = write_report(run_dir).read_text()
    assert "### Ensemble" in text and "| member 0 | 0.667 |" in text and "| member 1 | 0.600 |" in text
    assert "| **their mean** | **0.689** |" in text and "| their weight average (PPO's critic start) | 0.650 |" in text
    assert "the members' std is 0.250 on average, 0.50 of the spread of their mean" in text
    assert "the ensemble's mean reward σ(r_i − r_j)" in text
    assert "| 1 | 1 | 1.500 | 0.000 |" in text and "rm_uncertainty.png" in text
    assert (run_dir / "report" / "rm_uncertainty.png").read_bytes().startswith(PNG_MAGIC)
    assert (
        "**Reward**: an ensemble of 2 reward models, `reward_aggregation: mean_minus_std`: their mean − 0.5 × "
        "their std; the members' std on the policy's responses went from 0.490 (first step) to 0.400 (last)."
    ) in text
