"""Shared-prompt PPO forwards (rlhf/ppo/experience.py with rlhf/shared_prompt/): a prompt's samples_per_prompt
responses, consecutive rows of the rollout batch, run behind one copy of the prompt; on six model families the
actor's and reference's logits and the critic's values at every response token, their gradients and the reward
model's scores equal those of one sequence per response."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.architectures import FAMILIES, family_models

QUERY, RESPONSE = 5, 4


def grouped_batch(vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Two prompts (5 and 3 tokens, left-padded to 5), each answered three times (responses of 1 to 4 tokens,
    right-padded to 4): rows 0-2 are the first prompt's group, rows 3-5 the second's."""
    from rlhf.ppo.forward import sequence_inputs

    prompts = [torch.randint(3, vocab, (QUERY,), generator=generator) for _ in range(2)]
    query_mask = torch.stack([torch.arange(QUERY) >= QUERY - n for n in (5, 5, 5, 3, 3, 3)]).long()
    query = torch.stack([prompts[row // 3] for row in range(6)]) * query_mask
    response_mask = torch.stack([torch.arange(RESPONSE) < n for n in (4, 1, 3, 2, 4, 1)]).long()
    response = torch.randint(3, vocab, (6, RESPONSE), generator=generator) * response_mask
    return sequence_inputs(query, query_mask, response, response_mask)


def supports(policy, critic):
    from rlhf.ppo.forward import causal_lm_logits
    from rlhf.shared_prompt.forward import check_support

    return (
        check_support(causal_lm_logits(policy), policy, policy.config, "cpu", across_ranks=False),
        check_support(critic, critic, critic.model.config, "cpu", across_ranks=False),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompt_logits_and_values_equal_one_sequence_per_response(family):
    from rlhf.ppo.forward import response_logits, response_values

    policy, critic, vocab = family_models(family)
    policy_shared, critic_shared = supports(policy, critic)
    assert policy_shared.enabled and critic_shared.enabled, (policy_shared.reason, critic_shared.reason)
    inputs = grouped_batch(vocab, torch.Generator().manual_seed(1))
    real = inputs["attention_mask"][:, QUERY - 1 : -1].bool()  # positions that predict a real response token

    with torch.no_grad():
        padded_logits = response_logits(policy, inputs, QUERY)
        padded_values = response_values(critic, inputs, QUERY)
        # Alone in rows as long as the group (row_tokens None), and groups sharing rows of up to 512 tokens.
        for row_tokens in (None, 512):
            shared_logits = response_logits(policy, inputs, QUERY, row_tokens, policy_shared)
            shared_values = response_values(critic, inputs, QUERY, row_tokens, critic_shared)
            torch.testing.assert_close(shared_logits[real], padded_logits[real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(shared_values[real], padded_values[real], atol=1e-5, rtol=1e-5)
            assert (shared_logits[~real] == 0).all() and (shared_values[~real] == 0).all()


def test_shared_prompt_gradients_of_actor_and_critic_equal_one_sequence_per_response():
    from rlhf.ppo.forward import response_logits, response_values
    from rlhf.shared_prompt.forward import OFF

    policy, critic, vocab = family_models("llama3")
    policy_shared, critic_shared = supports(policy, critic)
    inputs = grouped_batch(vocab, torch.Generator().manual_seed(2))
    real = inputs["attention_mask"][:, QUERY - 1 : -1].bool()
    labels = inputs["input_ids"][:, QUERY:]
    weights = torch.linspace(0.5, 1.5, real.numel()).view_as(real)  # every token's output counts differently

    def gradients(model, loss_of):
        model.zero_grad()
        loss_of().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    def policy_loss(shared):
        logprobs = torch.log_softmax(response_logits(policy, inputs, QUERY, 512, shared), -1)
        return (logprobs.gather(-1, labels[..., None])[..., 0] * weights)[real].sum()

    def critic_loss(shared):
        return (response_values(critic, inputs, QUERY, 512, shared) ** 2 * weights)[real].sum()

    for model, loss, shared in ((policy, policy_loss, policy_shared), (critic, critic_loss, critic_shared)):
        separate, together = (
            gradients(model, lambda loss=loss: loss(OFF)),
            gradients(model, lambda loss=loss, shared=shared: loss(shared)),
        )
        assert separate.keys() == together.keys() and len(separate) > 5
        for name in separate:
            torch.testing.assert_close(together[name], separate[name], atol=1e-5, rtol=1e-4, msg=name)
        assert max(g.abs().max() for g in separate.values()) > 1e-3


def test_the_reward_models_scores_of_a_prompts_responses_equal_one_sequence_per_response():
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import tokenize_prompts
    from rlhf.shared_prompt.forward import reward_model_support
    from tests.helpers.ppo_setup import scalar_head_model, scores_in_ppo

    tokenizer = build_tokenizer(corpus_words())
    reward_model = scalar_head_model(tokenizer)
    shared = reward_model_support(reward_model, across_ranks=False)
    assert shared.enabled
    prompts = ["sort these words : cat dog owl answer :"] * 3 + ["reverse these words : owl fox answer :"] * 3
    batch = tokenize_prompts(tokenizer, prompts)
    word, eos, pad = tokenizer.convert_tokens_to_ids, tokenizer.eos_token_id, tokenizer.pad_token_id
    response_ids = torch.tensor(
        [
            [word("cat"), word("dog"), word("owl"), eos],
            [word("dog"), eos, pad, pad],
            [word("cat"), word("owl"), word("owl"), word("dog")],  # cut at max_new_tokens
            [word("fox"), word("owl"), eos, pad],
            [word("owl"), eos, pad, pad],
            [word("fox"), eos, pad, pad],
        ]
    )
    mask = rewards.response_mask_after_eos(response_ids, eos, pad)
    separate = scores_in_ppo(reward_model, tokenizer, tokenizer, batch, response_ids, mask, offset=0.5)
    # Whole, and in forwards of 4 rollouts, which cut the second group in two.
    for forward_batch_size in (0, 4):
        together = scores_in_ppo(
            reward_model,
            tokenizer,
            tokenizer,
            batch,
            response_ids,
            mask,
            offset=0.5,
            shared_prompt=shared,
            forward_batch_size=forward_batch_size,
        )
        torch.testing.assert_close(together, separate, atol=1e-5, rtol=1e-5)


def test_models_that_fail_the_check_are_named_in_one_line_per_reason_and_a_missing_critic_is_off(capsys):
    """A LoRA actor serves as its own reference: they share a verdict. Without a critic (critic-free
    estimators) nothing is checked or said for it."""
    import copy
    from types import SimpleNamespace

    from transformers import AttentionInterface, AutoModelForCausalLM

    from rlhf.ppo.engines import shared_prompt_supports
    from rlhf.shared_prompt.forward import OFF
    from tests.helpers.architectures import family_reward_model, ignores_custom_masks

    AttentionInterface.register("ignores_custom_masks", ignores_custom_masks)
    reward_model = family_reward_model("llama3")
    policy = AutoModelForCausalLM.from_config(
        copy.deepcopy(reward_model.config), attn_implementation="ignores_custom_masks"
    ).eval()
    engines = SimpleNamespace(
        actor=SimpleNamespace(module=policy, device=torch.device("cpu")),
        critic=None,
        reference=None,
        reward=SimpleNamespace(module=reward_model, device=torch.device("cpu")),
    )
    supports = shared_prompt_supports(engines)
    assert not supports["actor"].enabled and supports["reference"] == supports["actor"]
    assert supports["critic"] == OFF and supports["reward"].enabled
    assert capsys.readouterr().out.splitlines() == [
        "shared_prompt_forward: the actor, reference models: its attention does not keep the responses apart "
        "under a custom mask; each response runs with its own copy of the prompt"
    ]


@pytest.mark.slow
def test_the_ppo_stage_scores_and_trains_a_rollout_of_groups_behind_shared_prompts(tmp_path, capsys, models):
    """The stage's own engines (ZeRO-0, a LoRA reference would be the actor) with samples_per_prompt 2: every
    model passes its check, and the rollout's log-probabilities, reference log-probabilities, values and scores
    equal those of one sequence per response; the update runs on the shared forwards."""
    import dataclasses

    from rlhf.config import parse_config
    from rlhf.ppo import experience, update
    from rlhf.shared_prompt.forward import OFF
    from rlhf.shared_prompt.layout import runs_of_equal_rows
    from rlhf.stages.ppo import PPORecipe, PPOStageConfig
    from tests.helpers.ppo_setup import stage_arguments

    config = parse_config(
        PPOStageConfig,
        stage_arguments(models, tmp_path / "run", tmp_path / "registry", samples_per_prompt=2, forward_batch_size=3),
    )
    recipe = PPORecipe(config)
    recipe.setup()
    try:
        engines = recipe.engines
        assert all(support.enabled for support in engines.shared_prompt.values()), engines.shared_prompt
        assert "shared_prompt_forward:" not in capsys.readouterr().out
        batch = experience.tokenize_prompts(recipe.tokenizer, recipe.inputs.prompts_for_step(0))
        assert runs_of_equal_rows(batch.query_ids) == [2, 2, 2, 2]
        response_ids = experience.generate(engines.actor, batch, recipe.generation_config, recipe.zero3_generation)

        def scored():
            return experience.score(
                engines,
                batch,
                response_ids,
                recipe.tokenizer,
                recipe.sampling,
                config.reward_max_length,
                config.forward_batch_size,
            )

        shared = scored()
        supports, engines.shared_prompt = engines.shared_prompt, dict.fromkeys(engines.shared_prompt, OFF)
        separate = scored()
        engines.shared_prompt = supports
        real = shared.response_mask.bool()
        for field in ("logprobs", "ref_logprobs", "values"):
            torch.testing.assert_close(
                getattr(shared, field)[real], getattr(separate, field)[real], atol=1e-5, rtol=1e-5, msg=field
            )
        torch.testing.assert_close(shared.scores, separate.scores, atol=1e-5, rtol=1e-5)

        rollout, _ = experience.with_advantages(
            shared, experience.RewardShaping(kl_coef=0.05, kl_estimator="k1"), recipe.sampling.stop_token_ids, None
        )
        settings = recipe.update_settings
        assert settings.actor_shared_prompt.enabled and settings.critic_shared_prompt.enabled
        result = update.ppo_update(
            engines.actor,
            engines.critic,
            rollout,
            dataclasses.replace(settings),
            torch.Generator().manual_seed(0),
            None,
            0,
            10,
        )
        assert result.skipped == 0 and len(result.stats) == 2
    finally:
        recipe.cleanup()
