"""rlhf.ppo.experience: scores shaped into rewards and advantages by hand, and the responses the reward model reads."""

from __future__ import annotations

import torch

from tests.helpers.ppo_setup import scalar_head_model, scores_in_ppo


def test_reward_shaping_by_hand():
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import RewardShaping, with_advantages
    from rlhf.ppo.rollout import Rollout

    # One response of 2 tokens ending in EOS (2), one of 3 tokens without EOS.
    response_ids = torch.tensor([[7, 2, 0], [7, 8, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logprobs = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, -2.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    rollout = Rollout(
        query_ids=torch.ones(2, 1, dtype=torch.long),
        query_mask=torch.ones(2, 1),
        response_ids=response_ids,
        response_mask=mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=torch.zeros(2, 3),
        scores=torch.tensor([3.0, 3.0]),
    )
    shaping = RewardShaping(kl_coef=0.1, score_clip=2.5, missing_eos_penalty=1.0, gamma=1.0, lam=1.0)
    shaped, kl = with_advantages(rollout, shaping, eos_token_id=2, moments=None)
    # Row 0: score 3 clipped to 2.5 at its last token; KL 0.5 at token 0. Row 1: 3 clipped to 2.5, then - 1 for
    # the missing EOS (the penalty comes after clipping, so it is never clipped away) = 1.5 at token 2, KL -1 at
    # token 1.
    expected_rewards = torch.tensor([[-0.05, 2.5, 0.0], [0.0, 0.1, 1.5]])
    torch.testing.assert_close(shaped.rewards, expected_rewards)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    # With V = 0, γ = λ = 1 the returns are the reward-to-go; advantages are those, whitened over real tokens.
    returns = torch.tensor([[2.45, 2.5, 0.0], [1.6, 1.6, 1.5]])
    torch.testing.assert_close(shaped.returns, returns)
    torch.testing.assert_close(shaped.advantages, rewards.masked_whiten(returns, mask))


def test_missing_eos_penalty_is_in_units_of_normalised_scores():
    from rlhf.ppo.experience import RewardShaping, with_advantages
    from rlhf.ppo.rewards import RunningMoments
    from rlhf.ppo.rollout import Rollout

    # Scores 10 and 30: running mean 20, unbiased std sqrt(200) = 14.142; normalised -0.7071 and 0.7071.
    # Row 1 has no EOS: 0.7071 - 0.5 = 0.2071, whatever the raw scale of the scores was.
    zeros = torch.zeros(2, 2)
    rollout = Rollout(
        query_ids=torch.ones(2, 1, dtype=torch.long),
        query_mask=torch.ones(2, 1),
        response_ids=torch.tensor([[7, 2], [7, 8]]),
        response_mask=torch.ones(2, 2),
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.tensor([10.0, 30.0]),
    )
    moments = RunningMoments()
    shaped, _ = with_advantages(
        rollout, RewardShaping(kl_coef=0.0, missing_eos_penalty=0.5), eos_token_id=2, moments=moments
    )
    torch.testing.assert_close(shaped.rewards[:, -1], torch.tensor([-0.70710678, 0.20710678]))
    assert (moments.mean, moments.count) == (20.0, 2)  # the moments saw the reward model's scores alone


def test_responses_are_retokenized_for_a_reward_model_with_another_tokenizer():
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer
    from rlhf.models import same_tokenization
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import decode_responses, tokenize_prompts
    from rlhf.rm.model import score_texts

    policy_tokenizer = build_tokenizer(corpus_words())
    # One more word shifts every id after it: the same text becomes other ids for the reward model.
    reward_tokenizer = build_tokenizer(corpus_words() + ["aardvark"])
    assert not same_tokenization(policy_tokenizer, reward_tokenizer)
    reward_model = scalar_head_model(reward_tokenizer)
    prompts = ["sort these words : cat dog answer :", "reverse these words : owl fox bear answer :"]
    batch = tokenize_prompts(policy_tokenizer, prompts)
    word = policy_tokenizer.convert_tokens_to_ids
    response_ids = torch.tensor(
        [[word("cat"), word("dog"), policy_tokenizer.eos_token_id], [word("bear"), word("fox"), word("owl")]]
    )
    mask = rewards.response_mask_after_eos(response_ids, policy_tokenizer.eos_token_id, policy_tokenizer.pad_token_id)
    scores = scores_in_ppo(reward_model, reward_tokenizer, policy_tokenizer, batch, response_ids, mask, offset=0.25)
    texts = decode_responses(policy_tokenizer, batch, response_ids, mask)
    assert texts == [" cat dog", " bear fox owl"]  # decoded after the prompt: the joining space is theirs
    expected = score_texts(reward_model, reward_tokenizer, prompts, texts, max_length=64)
    torch.testing.assert_close(scores, torch.tensor(expected) - 0.25)


def test_with_the_same_tokenization_the_generated_ids_are_scored_as_the_text_would_be():
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer
    from rlhf.ppo import rewards
    from rlhf.ppo.experience import decode_responses, tokenize_prompts
    from rlhf.rm.model import score_texts

    tokenizer = build_tokenizer(corpus_words())
    reward_model = scalar_head_model(tokenizer)
    prompts = ["first word of these : cat dog answer :", "sort these words : owl fox answer :"]
    batch = tokenize_prompts(tokenizer, prompts)
    word = tokenizer.convert_tokens_to_ids
    # A response ended by EOS and one cut at max_new_tokens: both reach the reward model ending in EOS.
    response_ids = torch.tensor(
        [[word("cat"), tokenizer.eos_token_id, tokenizer.pad_token_id], [word("fox"), word("owl"), word("fox")]]
    )
    mask = rewards.response_mask_after_eos(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    scores = scores_in_ppo(reward_model, tokenizer, tokenizer, batch, response_ids, mask, offset=0.0)
    expected = score_texts(
        reward_model, tokenizer, prompts, decode_responses(tokenizer, batch, response_ids, mask), max_length=64
    )
    torch.testing.assert_close(scores, torch.tensor(expected))
