"""PPO's held-out evaluation every eval_steps: where it samples, what it measures, and that training never feels it."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.errors import ConfigError
from rlhf.ppo.evaluation import _share_of_rank
from tests.helpers.ppo_setup import assert_same_metric_rows, engines_for, stage_arguments


def test_every_rank_gets_as_many_held_out_prompts_wrapping_round():
    prompts = ["a", "b", "c", "d", "e"]
    assert [_share_of_rank(prompts, rank, 2) for rank in (0, 1)] == [["a", "b", "c"], ["d", "e", "a"]]
    assert _share_of_rank(prompts, 0, 1) == prompts
    assert [_share_of_rank(["a"], rank, 3) for rank in range(3)] == [["a"]] * 3


def test_eval_steps_needs_held_out_prompts(tmp_path):
    from rlhf.config import parse_config
    from rlhf.ppo.config import PPOStageConfig

    paths = {"policy": "p", "reward": "r", "prompts": "train.jsonl", "eval_prompts": ""}
    with pytest.raises(ConfigError, match="eval_steps > 0 needs eval_prompts_file"):
        parse_config(PPOStageConfig, stage_arguments(paths, tmp_path, tmp_path, eval_steps=5))
    with pytest.raises(ConfigError, match="eval_steps must be >= 0"):
        parse_config(PPOStageConfig, stage_arguments(paths, tmp_path, tmp_path, eval_steps=-1))


@pytest.mark.slow
def test_the_held_out_row_of_the_starting_policy(models, tmp_path):
    from rlhf.evaluation import gold_scorer
    from rlhf.ppo.evaluation import HeldOutEvaluation
    from rlhf.ppo.logprobs import sampling_settings_for
    from rlhf.ppo.rollouts import HFRollouts

    config, inputs, engines = engines_for(
        models, tmp_path, eval_steps=2, eval_steps_prompts=5, max_steps=5, gold_scorer="demo", max_new_tokens=6
    )
    sampling = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, 6)
    rollouts = HFRollouts(sampling.generation_config(inputs.tokenizer), "auto")
    held_out = HeldOutEvaluation(
        config, inputs, inputs.tokenizer, sampling, rollouts, gold_scorer("demo"), start_step=0
    )
    training_rng = torch.get_rng_state()
    row = held_out.evaluate_if_due(0, engines)
    assert torch.equal(torch.get_rng_state(), training_rng)  # the evaluation sampled from its own generator
    assert set(row) == {"step", "rm_score", "kl", "gold_score", "prompts"} and row["prompts"] == 5
    assert row["kl"] == pytest.approx(0.0, abs=1e-6)  # the actor is still the reference
    assert 0.0 <= row["gold_score"] <= 1.0
    assert [held_out.due(step) for step in range(6)] == [True, False, True, False, True, True]  # and the last
    assert held_out.evaluate_if_due(1, engines) is None
    assert held_out.evaluate_if_due(0, engines) == row  # the same weights and noise: the same row
    written = [json.loads(line) for line in (tmp_path / "run" / "eval_metrics.jsonl").read_text().splitlines()]
    assert written == [row, row]
    # A run resumed at step 0 starts the file again from there.
    HeldOutEvaluation(config, inputs, inputs.tokenizer, sampling, rollouts, None, start_step=0)
    assert (tmp_path / "run" / "eval_metrics.jsonl").read_text() == ""


@pytest.mark.slow
def test_a_run_with_held_out_evaluations_trains_exactly_as_one_without(models, tmp_path):
    from rlhf.config import parse_config
    from rlhf.ppo.tracking import read_metrics
    from rlhf.stages.ppo import PPOStageConfig, run

    common = dict(max_steps=5, save_steps=0, eval_prompts=3, gold_scorer="demo")
    run(parse_config(PPOStageConfig, stage_arguments(models, tmp_path / "plain", tmp_path / "reg1", **common)))
    run(
        parse_config(
            PPOStageConfig,
            stage_arguments(
                models, tmp_path / "evaluated", tmp_path / "reg2", eval_steps=2, eval_steps_prompts=6, **common
            ),
        )
    )
    assert_same_metric_rows(read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "evaluated"))
    assert not (tmp_path / "plain" / "eval_metrics.jsonl").exists()
    rows = [json.loads(line) for line in (tmp_path / "evaluated" / "eval_metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 2, 4, 5]
    # k1 on 6 responses: an unbiased estimate, but a noisy one, of either sign once the policy has moved.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] != 0.0
    assert all(row["prompts"] == 6 and "gold_score" in row for row in rows)
