"""`python -m rlhf.evaluate best-of-n` on the tiny test models, and how it fills its settings from a run."""

from __future__ import annotations

import json

import pytest
import yaml

from rlhf.evaluate.cli import build_parser, main, settings_from_run
from rlhf.evaluate.overoptimisation import best_of_n_expectation, best_of_n_kl


def _run_dir(root, ppo_settings: dict):
    (root / "run" / "ppo").mkdir(parents=True)
    (root / "run" / "ppo" / "resolved_config.yaml").write_text(yaml.safe_dump(ppo_settings))
    return root / "run"


def test_a_runs_ppo_settings_fill_what_is_not_given(tmp_path):
    run = _run_dir(
        tmp_path,
        {
            "model_name_or_path": "sft@2",
            "reference_model": "",
            "reward_model": "rm@3",
            "eval_prompts_file": "eval.jsonl",
            "gold_scorer": "demo",
            "temperature": 0.7,
            "top_k": 0,
            "top_p": 0.9,
            "max_new_tokens": 16,
            "seed": 5,
            "max_prompt_length": 48,
        },
    )
    (run / "registry").mkdir()
    args = settings_from_run(build_parser().parse_args(["best-of-n", "--run_dir", str(run), "--temperature", "1.0"]))
    assert (args.policy, args.reward_model, args.prompts, args.gold_scorer) == ("sft@2", "rm@3", "eval.jsonl", "demo")
    assert (args.temperature, args.top_p, args.max_new_tokens, args.seed, args.max_prompt_length) == (
        1.0,
        0.9,
        16,
        5,
        48,
    )
    assert args.registry_dir == str(run / "registry")
    assert args.output == str(run / "evaluation" / "best_of_n.json")
    # Without a run: the defaults.
    plain = settings_from_run(build_parser().parse_args(["best-of-n", "-o", "x.json"]))
    assert (plain.policy, plain.reward_model, plain.prompts, plain.gold_scorer, plain.max_new_tokens) == (
        "sft",
        "rm",
        "",
        "",
        32,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["best-of-n", "--prompts", "p.jsonl"], "needs --output"),
        (["best-of-n", "-o", "x.json"], "needs --prompts"),
        (["best-of-n", "-o", "x.json", "--prompts", "p.jsonl", "--n", "0", "4"], "--n must be between 1 and 1024"),
    ],
)
def test_missing_or_bad_settings_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_best_of_n_on_a_run_samples_once_and_reads_every_n_off_the_same_samples(tmp_path, capsys, models):
    run = _run_dir(
        tmp_path,
        {
            "model_name_or_path": models["policy"],
            "reference_model": "",
            "reward_model": models["reward"],
            "eval_prompts_file": models["eval_prompts"],
            "gold_scorer": "demo",
            "max_new_tokens": 4,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "seed": 0,
            "max_prompt_length": 48,
        },
    )
    assert main(["best-of-n", "--run_dir", str(run), "--limit", "4", "--n", "1", "2", "4"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "evaluation" / "best_of_n.json").read_text())

    assert (result["prompts"], result["samples_per_prompt"], result["gold_scorer"]) == (4, 4, "demo")
    assert [len(row) for row in result["rm_scores"]] == [4] * 4 and [len(row) for row in result["gold_scores"]] == [
        4
    ] * 4
    points = result["points"]
    assert [p["n"] for p in points] == [1, 2, 4]
    assert [p["kl"] for p in points] == pytest.approx([best_of_n_kl(n) for n in (1, 2, 4)])
    for point in points:  # every N is read off the same samples
        n = point["n"]
        rm = [best_of_n_expectation(row, row, n) for row in result["rm_scores"]]
        gold = [best_of_n_expectation(r, g, n) for r, g in zip(result["rm_scores"], result["gold_scores"])]
        assert point["rm_score"] == pytest.approx(sum(rm) / 4) and point["gold_score"] == pytest.approx(sum(gold) / 4)
    rm_curve = [p["rm_score"] for p in points]
    assert rm_curve == sorted(rm_curve)  # picking the RM's favourite of more samples never lowers its mean score
    assert set(result["fits"]) == {"rm_score", "gold_score"} and result["fits"]["rm_score"]["points"] == 2
    assert "best-of-N of" in printed and f"wrote {run / 'evaluation' / 'best_of_n.json'}" in printed
