"""rlhf.ppo.config: the demo's config, values refused in one line, and the batch sizes a group estimator needs."""

from __future__ import annotations

import pytest

from rlhf.errors import ConfigError
from tests.helpers import REPO


def parse(argv):
    from rlhf.config import parse_config
    from rlhf.stages.ppo import PPOStageConfig

    return parse_config(PPOStageConfig, argv)


def test_demo_config_loads_and_every_field_documents_itself():
    import dataclasses

    from rlhf.stages.ppo import PPOStageConfig

    config = parse(["--config", str(REPO / "configs" / "ppo.yaml")])
    assert config.model_name_or_path == "sft" and config.reward_model == "rm" and config.critic_model == "rm"
    assert config.reference_model == ""
    for f in dataclasses.fields(PPOStageConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--adaptation_method", "bitfit"], "adaptation_method \\(actor\\) must be one of"),
        (["--critic_adaptation_method", "ia3"], "critic_adaptation_method must be one of"),
        (["--rollout_batch_size", "10", "--minibatch_size", "4"], "must be a multiple of minibatch_size"),
        (["--temperature", "0"], "temperature must be > 0"),
        (["--zero3_generation", "sometimes"], "zero3_generation must be one of"),
        (["--ptx_coef", "0.5"], "ptx_coef > 0 needs a ptx_file"),
        (["--kl_estimator", "k9"], r"kl_estimator must be one of \('k1', 'k2', 'k3', 'abs'\), got 'k9'"),
        (["--reward_aggregation", "median"], "reward_aggregation must be one of"),
        (["--uncertainty_coef", "-1"], "uncertainty_coef must be >= 0"),
    ],
)
def test_bad_values_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(["--prompts_file", "p.jsonl", *argv])


def test_total_episodes_sets_the_number_of_steps():
    config = parse(
        ["--prompts_file", "p.jsonl", "--total_episodes", "100", "--rollout_batch_size", "16", "--minibatch_size", "8"]
    )
    assert config.steps == 7  # ceil(100 / 16) on one process


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--advantage_estimator", "ppo"], "advantage_estimator must be one of \\('gae', 'rloo', 'grpo'"),
        (
            ["--advantage_estimator", "rloo"],
            "advantage_estimator rloo compares the responses to one prompt: samples_per_prompt must be >= 2, got 1",
        ),
        (["--advantage_estimator", "reinforce_pp_baseline"], "samples_per_prompt must be >= 2"),
        (["--samples_per_prompt", "0"], "samples_per_prompt must be >= 1, got 0"),
        (
            ["--samples_per_prompt", "3", "--rollout_batch_size", "16", "--minibatch_size", "8"],
            "rollout_batch_size 16 must be a multiple of samples_per_prompt 3: a prompt's responses stay together",
        ),
        (
            ["--samples_per_prompt", "4", "--rollout_batch_size", "16", "--minibatch_size", "2"],
            "minibatch_size 2 must be a multiple of samples_per_prompt 4",
        ),
        (["--loss_aggregation", "sum"], "loss_aggregation must be one of"),
        (
            ["--advantage_estimator", "rloo", "--samples_per_prompt", "4", "--scale_rewards", "false"],
            "scale_rewards: false \\(Dr.GRPO\\) applies to advantage_estimator grpo, not rloo",
        ),
        (["--kl_in_loss", "true", "--adaptive_kl", "true"], "adaptive_kl steers the KL penalty in the reward"),
    ],
)
def test_estimator_settings_that_cannot_work_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(["--prompts_file", "p.jsonl", *argv])


def test_a_group_estimator_counts_responses_in_the_batch_sizes():
    config = parse(
        [
            "--prompts_file",
            "p.jsonl",
            "--advantage_estimator",
            "grpo",
            "--samples_per_prompt",
            "4",
            "--rollout_batch_size",
            "16",
            "--minibatch_size",
            "8",
            "--scale_rewards",
            "false",
            "--loss_aggregation",
            "dr_grpo",
            "--kl_in_loss",
            "true",
            "--total_episodes",
            "40",
        ]
    )
    assert config.prompts_per_rank == 4 and not config.needs_critic  # 16 responses: 4 prompts x 4 samples
    assert config.steps == 3  # ceil(40 responses / 16)
    assert parse(["--prompts_file", "p.jsonl"]).needs_critic  # gae, the default
