"""What the PPO engines start from: a critic on the rewards' scale, dropout only when asked for, and a learning-rate
schedule with warmup and decay."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.helpers.ppo_setup import build_models, engines_for


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ppo_setting_models")
    paths = build_models(root)
    # A reward model normalised as the RM stage leaves it: its scores minus an offset.
    from rlhf.rm.model import RewardNormalization

    RewardNormalization(offset=3.25, normalized_on="test", samples=1).save(paths["reward"])
    # A policy that has dropout, to see whether it is on.
    dropout_policy = root / "dropout_policy"
    shutil.copytree(paths["policy"], dropout_policy)
    config = json.loads((dropout_policy / "config.json").read_text())
    (dropout_policy / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return {**paths, "dropout_policy": str(dropout_policy)}


def test_the_critic_starts_on_the_scale_of_the_rewards(models, tmp_path):
    from rlhf.rm.model import raw_scores

    _, inputs, engines = engines_for(models, tmp_path)
    tokenizer = inputs.tokenizer
    ids = tokenizer(
        inputs.prompts[0]["prompt"] if isinstance(inputs.prompts[0], dict) else inputs.prompts[0], return_tensors="pt"
    ).input_ids
    ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        values = engines.critic.module(ids, mask)
        raw = raw_scores(engines.reward.module, ids, mask)
    assert engines.reward_offsets == (3.25,)
    # PPO's reward for this sequence is raw - 3.25; the critic's value at its last token is the same number.
    torch.testing.assert_close(values[:, -1], raw.float() - 3.25)


def test_dropout_is_on_in_actor_and_critic_only_when_disable_dropout_is_false(models, tmp_path):
    policy = models["dropout_policy"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    mask = torch.ones_like(ids)
    for disable_dropout in (True, False):
        _, _, engines = engines_for(
            models,
            tmp_path / str(disable_dropout),
            model_name_or_path=policy,
            reference_model=policy,
            disable_dropout=disable_dropout,
        )
        assert engines.actor.module.training is not disable_dropout
        assert engines.critic.module.training is not disable_dropout
        assert not engines.reference.module.training and not engines.reward.module.training
        with torch.no_grad():
            first, second = (engines.actor.module(input_ids=ids, attention_mask=mask).logits for _ in range(2))
            reference = [engines.reference.module(input_ids=ids, attention_mask=mask).logits for _ in range(2)]
        assert torch.equal(first, second) is disable_dropout
        assert torch.equal(*reference)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_learning_rate_warms_up_then_decays_over_all_optimiser_steps(models, tmp_path, schedule):
    # 3 PPO steps x 2 epochs x (8 / 4) minibatches = 12 optimiser steps, the first 2 of them warmup.
    config, _, engines = engines_for(
        models,
        tmp_path,
        max_steps=3,
        ppo_epochs=2,
        rollout_batch_size=8,
        minibatch_size=4,
        actor_learning_rate=1e-3,
        critic_learning_rate=2e-3,
        lr_scheduler_type=schedule,
        warmup_steps=2,
    )
    assert config.steps * config.updates_per_step == 12
    by_hand = {
        "linear": lambda s: s / 2 if s < 2 else (12 - s) / 10,
        "cosine": lambda s: s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 10)),
        "constant": lambda s: s / 2 if s < 2 else 1.0,
    }[schedule]
    for step in range(13):
        for engine, peak in ((engines.actor, 1e-3), (engines.critic, 2e-3)):
            # The rate the optimiser itself will use, not only what the scheduler reports.
            optimizer_rates = [group["lr"] for group in engine.optimizer.param_groups]
            assert optimizer_rates == pytest.approx([peak * by_hand(step)] * len(optimizer_rates)), (schedule, step)
            engine.lr_scheduler.step()


def test_an_ensemble_is_one_reward_engine_and_the_critic_starts_from_its_weight_average(models, tmp_path):
    from rlhf.ppo.experience import member_reward_scores, reward_inputs, tokenize_prompts
    from rlhf.rm.ensemble import RewardEnsemble, member_dirs
    from rlhf.rm.model import RewardNormalization, raw_scores, single_reward_model
    from tests.helpers.ppo_setup import build_reward_ensemble

    ensemble = build_reward_ensemble(tmp_path, models, offsets=(0.5, -0.25))
    RewardNormalization(offset=1.5, normalized_on="test", samples=1).save(ensemble)  # the weight average's own
    _, inputs, engines = engines_for(
        models, tmp_path, reward_model=ensemble, critic_model=ensemble, reward_aggregation="min"
    )
    assert isinstance(engines.reward.module, RewardEnsemble) and engines.reward_offsets == (0.5, -0.25)

    tokenizer = inputs.tokenizer
    batch = tokenize_prompts(tokenizer, ["sort these words : cat dog answer :", "repeat : owl answer :"])
    word = tokenizer.convert_tokens_to_ids
    response_ids = torch.tensor(
        [[word("cat"), word("dog"), tokenizer.eos_token_id], [word("owl"), word("owl"), word("owl")]]
    )
    mask = torch.ones_like(response_ids)
    with torch.no_grad():
        scores = member_reward_scores(engines, tokenizer, batch, response_ids, mask, max_length=64)
    assert scores.shape == (2, 2)
    # What the reward model reads of each rollout (`reward_inputs`), through each member alone.
    sequences = reward_inputs(
        tokenizer,
        engines.reward_tokenizer,
        batch,
        response_ids,
        mask,
        64,
        engines.reward_stop_token_ids,
        engines.reward_stop_token_ids,
    )
    for index, (member_dir, offset) in enumerate(zip(member_dirs(ensemble), (0.5, -0.25))):
        alone = single_reward_model(str(member_dir))[0]
        with torch.no_grad():
            expected = [
                raw_scores(alone, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
                for ids in sequences
            ]
        torch.testing.assert_close(scores[:, index], torch.stack(expected).float() - offset, rtol=1e-5, atol=1e-5)

    # The critic is the weight average at the top of the directory, on its own offset's scale.
    averaged = single_reward_model(ensemble)[0]
    ids = torch.tensor(sequences[:1])
    with torch.no_grad():
        value = engines.critic.module(ids, torch.ones_like(ids))[:, -1]
        torch.testing.assert_close(value, raw_scores(averaged, ids, torch.ones_like(ids)).float() - 1.5)


def test_an_aggregation_of_members_needs_an_ensemble(models, tmp_path):
    from rlhf.config import parse_config
    from rlhf.errors import ConfigError
    from rlhf.ppo import inputs as ppo_inputs
    from rlhf.stages.ppo import PPOStageConfig
    from tests.helpers.ppo_setup import stage_arguments

    config = parse_config(
        PPOStageConfig,
        stage_arguments(models, tmp_path / "run", tmp_path / "registry", reward_aggregation="mean_minus_std"),
    )
    with pytest.raises(
        ConfigError, match="reward_aggregation mean_minus_std combines the members of a reward-model ensemble"
    ):
        ppo_inputs.read_inputs(config)
