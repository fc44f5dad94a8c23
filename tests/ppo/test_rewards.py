"""rlhf.ppo.rewards against numbers worked out by hand (the arithmetic is in the comments; constants in by_hand)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo import rewards as ppo_rewards
from tests.helpers.by_hand import NAN, close

# ---------------------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------------------


def test_masked_mean_ignores_padding_even_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(ppo_rewards.masked_mean(x, mask), 7 / 3)  # (1 + 2 + 4) / 3
    close(ppo_rewards.masked_mean(x, mask, dim=1), [1.5, 4.0])  # (1 + 2) / 2, 4 / 1
    close(ppo_rewards.masked_mean(x, mask.bool(), dim=0), [2.5, 2.0, 0.0])  # (1 + 4) / 2, 2 / 1, empty column -> 0


def test_masked_mean_of_empty_mask_is_zero():
    close(ppo_rewards.masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])), 0.0)


def test_masked_var_by_hand():
    # entries 1, 2, 3 (100 is padding): mean 2, squared deviations 1, 0, 1 sum to 2
    # unbiased 2 / (3 - 1) = 1; biased 2 / 3
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    close(ppo_rewards.masked_var(x, mask), 1.0)
    close(ppo_rewards.masked_var(x, mask, unbiased=False), 2 / 3)


def test_masked_var_with_fewer_than_two_entries_is_zero():
    x = torch.tensor([5.0, 7.0])
    close(ppo_rewards.masked_var(x, torch.tensor([1, 0])), 0.0)
    close(ppo_rewards.masked_var(x, torch.tensor([0, 0])), 0.0)


def test_masked_whiten_by_hand():
    # entries 2, 4, 6 (NaN is padding): mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    # whitened: (2-4)/2, (4-4)/2, (6-4)/2 = -1, 0, 1; padding -> 0
    x = torch.tensor([[2.0, 4.0], [6.0, NAN]])
    mask = torch.tensor([[1, 1], [1, 0]])
    close(ppo_rewards.masked_whiten(x, mask), [[-1.0, 0.0], [1.0, 0.0]])
    # shift_mean=False adds the mean back: -1 + 4, 0 + 4, 1 + 4
    close(ppo_rewards.masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0], [5.0, 0.0]])


def test_masked_whiten_of_a_single_entry_is_zero_not_nan():
    close(ppo_rewards.masked_whiten(torch.tensor([3.0, 9.0]), torch.tensor([1, 0])), [0.0, 0.0])


def test_explained_variance_by_hand():
    mask = torch.tensor([1, 1, 1, 0])
    returns = torch.tensor([1.0, 2.0, 3.0, 50.0])
    # Var[R] (biased) = (1 + 0 + 1) / 3 = 2/3
    close(ppo_rewards.explained_variance(torch.tensor([1.0, 2.0, 3.0, -9.0]), returns, mask), 1.0)  # perfect critic
    close(ppo_rewards.explained_variance(torch.tensor([2.0, 2.0, 2.0, -9.0]), returns, mask), 0.0)  # constant critic
    # values 1, 2, 4: residuals 0, 0, -1, mean -1/3, Var = ((1/3)² + (1/3)² + (2/3)²) / 3 = 2/9
    # EV = 1 - (2/9) / (2/3) = 2/3
    close(ppo_rewards.explained_variance(torch.tensor([1.0, 2.0, 4.0, -9.0]), returns, mask), 2 / 3)


def test_explained_variance_of_constant_returns_is_nan():
    assert math.isnan(ppo_rewards.explained_variance(torch.zeros(3), torch.ones(3), torch.ones(3)).item())


# ---------------------------------------------------------------------------------------------------------
# response masks, EOS penalty, KL-penalised rewards
# ---------------------------------------------------------------------------------------------------------

EOS, PAD = 2, 0


@pytest.mark.parametrize(
    "response, expected",
    [
        ([5, 2, 7, 0], [1, 1, 0, 0]),  # EOS in the middle: kept; the token after it is not
        ([2, 5, 5, 5], [1, 0, 0, 0]),  # EOS as the first token
        ([5, 6, 7, 8], [1, 1, 1, 1]),  # no EOS: truncated at max_new_tokens, all kept
        ([5, 6, 0, 0], [1, 1, 0, 0]),  # no EOS, right padding
        ([5, 2, 2, 0], [1, 1, 0, 0]),  # only the first EOS counts
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # nothing but padding
    ],
    ids=["eos-middle", "eos-first", "no-eos", "no-eos-padded", "two-eos", "all-padding"],
)
def test_response_mask_after_eos(response, expected):
    mask = ppo_rewards.response_mask_after_eos(torch.tensor([response]), EOS, PAD)
    assert mask.tolist() == [expected]


def test_response_mask_when_pad_is_eos():
    # GPT-2 style pad == eos == 2: the first 2 ends the response, later 2s are padding
    mask = ppo_rewards.response_mask_after_eos(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8]]), 2, 2)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_score_with_eos_penalty():
    # row 0 ends with EOS: unchanged 1.0; row 1 has no EOS: 0.5 - 1.0 = -0.5
    scores = ppo_rewards.score_with_eos_penalty(
        torch.tensor([1.0, 0.5]), torch.tensor([[5, 2, 0], [5, 6, 7]]), eos_token_id=EOS, missing_eos_penalty=1.0
    )
    close(scores, [1.0, -0.5])


LOGPROBS = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, NAN]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, NAN]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
SCORE = torch.tensor([2.0, -1.0])


def test_kl_penalized_rewards_k1_by_hand():
    # k1 = logp - ref: row 0: -1 - -1.5 = 0.5, -2 - -1 = -1, 0; row 1: 1, 0, (padding) 0
    # rewards = -0.1 * kl, plus the score at the last real token:
    #   row 0: -0.05, 0.1, 0 + 2 = 2.0      row 1: -0.1, 0 + (-1) = -1.0, 0
    rewards, kl = ppo_rewards.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, kl_coef=0.1)
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])
    close(rewards, [[-0.05, 0.1, 2.0], [-0.1, -1.0, 0.0]])


def test_kl_penalized_rewards_other_estimators_by_hand():
    # log r = ref - logp: row 0: -0.5, 1, 0; row 1: -1, 0
    # k3 = e^{log r} - 1 - log r: e^-0.5 - 1 + 0.5 = 0.1065307, e - 1 - 1 = 0.7182818, 0; e^-1 - 1 + 1 = 0.3678794, 0
    _, kl = ppo_rewards.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="k3")
    close(kl, [[0.1065307, 0.7182818, 0.0], [0.3678794, 0.0, 0.0]])
    assert (kl >= 0).all()
    # abs: 0.5, 1, 0; 1, 0
    _, kl = ppo_rewards.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="abs")
    close(kl, [[0.5, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # k2 = ½ (log r)²: 0.125, 0.5, 0; 0.5, 0
    _, kl = ppo_rewards.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="k2")
    close(kl, [[0.125, 0.5, 0.0], [0.5, 0.0, 0.0]])


def test_kl_penalized_rewards_eos_first_and_empty_response():
    # row 0: EOS as first token, one real token: -0.5 * (0 - 1) + 3 = 3.5
    # row 1: no real token: no KL, the score has nowhere to go, all zeros
    rewards, kl = ppo_rewards.kl_penalized_rewards(
        torch.tensor([3.0, 7.0]), torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([[1, 0], [0, 0]]), kl_coef=0.5
    )
    close(rewards, [[3.5, 0.0], [0.0, 0.0]])
    close(kl, [[-1.0, 0.0], [0.0, 0.0]])


def test_kl_penalized_rewards_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="kl_estimator"):
        ppo_rewards.kl_penalized_rewards(SCORE, LOGPROBS, REF_LOGPROBS, MASK, 0.1, kl_estimator="k4")


# ---------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------


def test_gae_three_tokens_by_hand():
    # γ = 0.9, λ = 0.8 (γλ = 0.72), V = 1, 2, 3, r = 0, 0, 1
    # t=2: δ = 1 + 0.9·0 - 3 = -2                  A2 = -2
    # t=1: δ = 0 + 0.9·3 - 2 = 0.7                 A1 = 0.7 + 0.72·(-2) = -0.74
    # t=0: δ = 0 + 0.9·2 - 1 = 0.8                 A0 = 0.8 + 0.72·(-0.74) = 0.2672
    # returns = A + V = 1.2672, 1.26, 1.0
    advantages, returns = ppo_rewards.gae_advantages(
        torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3), gamma=0.9, lam=0.8
    )
    close(advantages, [[0.2672, -0.74, -2.0]])
    close(returns, [[1.2672, 1.26, 1.0]])


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    # A_t = Σ_{s>=t} r_s - V_t: 1 - 1, 1 - 2, 1 - 3; returns are the reward-to-go, 1 everywhere
    advantages, returns = ppo_rewards.gae_advantages(
        torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3), gamma=1.0, lam=1.0
    )
    close(advantages, [[0.0, -1.0, -2.0]])
    close(returns, [[1.0, 1.0, 1.0]])


def test_gae_padding_does_not_leak_into_real_tokens():
    # row 0: the 3-token example above followed by 2 padded steps holding large values and rewards
    # row 1: 2 real tokens, V = 1, 2, r = 0, 1, then padding (V = 7, r = 9, NaN):
    #   t=1: δ = 1 - 2 = -1 (nothing bootstrapped from padding), A1 = -1
    #   t=0: δ = 0.9·2 - 1 = 0.8, A0 = 0.8 + 0.72·(-1) = 0.08;  returns 1.08, 1.0
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0, 100.0], [1.0, 2.0, 7.0, NAN, 7.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 50.0, 50.0], [0.0, 1.0, 9.0, 9.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    advantages, returns = ppo_rewards.gae_advantages(values, rewards, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.2672, -0.74, -2.0, 0.0, 0.0], [0.08, -1.0, 0.0, 0.0, 0.0]])
    close(returns, [[1.2672, 1.26, 1.0, 0.0, 0.0], [1.08, 1.0, 0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------
# RunningMoments
# ---------------------------------------------------------------------------------------------------------


def test_running_moments_by_hand():
    moments = ppo_rewards.RunningMoments()
    # 1, 2, 3: mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    mean, std = moments.update(torch.tensor([1.0, 2.0, 3.0]))
    assert (mean, std) == pytest.approx((2.0, 1.0))
    # then 4, 5: all of 1..5, mean 3, unbiased var (4 + 1 + 0 + 1 + 4) / 4 = 2.5, std 1.5811388
    mean, std = moments.update(torch.tensor([4.0, 5.0]))
    assert (mean, std) == pytest.approx((3.0, math.sqrt(2.5)))
    assert moments.count == 5
    close(moments.normalize(torch.tensor([3.0, 3.0 + math.sqrt(2.5)])), [0.0, 1.0])
    # an empty batch changes nothing
    assert moments.update(torch.zeros(0)) == pytest.approx((3.0, math.sqrt(2.5)))


def test_running_moments_resume_from_state_dict():
    uninterrupted = ppo_rewards.RunningMoments()
    for batch in ([1.0, 4.0], [2.0], [8.0, -1.0, 0.5]):
        uninterrupted.update(torch.tensor(batch))
    first = ppo_rewards.RunningMoments()
    first.update(torch.tensor([1.0, 4.0]))
    first.update(torch.tensor([2.0]))
    resumed = ppo_rewards.RunningMoments()
    resumed.load_state_dict(first.state_dict())
    resumed.update(torch.tensor([8.0, -1.0, 0.5]))
    assert resumed.state_dict() == pytest.approx(uninterrupted.state_dict())
    # and both agree with the moments of all six numbers at once
    everything = torch.tensor([1.0, 4.0, 2.0, 8.0, -1.0, 0.5], dtype=torch.float64)
    assert (resumed.mean, resumed.std) == pytest.approx((everything.mean().item(), everything.std().item()))
