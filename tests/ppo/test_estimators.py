"""rlhf.ppo.estimators against numbers worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo import estimators
from tests.helpers.by_hand import NAN, close

FULL = torch.ones(4, 2)
# Row 3's response is one token long: its second position is padding.
PADDED = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])


# ---------------------------------------------------------------------------------------------------------
# sequence rewards
# ---------------------------------------------------------------------------------------------------------


def test_sequence_reward_is_the_sum_of_the_token_rewards_on_real_tokens():
    # The per-token rewards of kl_penalized_rewards (score 2 and -1 at the last tokens, -β·KL elsewhere):
    #   row 0: -0.05 + 0.1 + 2.0 = 2.05;  row 1: -0.1 + -1.0 = -1.1 (NaN is padding)
    rewards = torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -1.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    close(estimators.sequence_rewards(rewards, mask), [2.05, -1.1])


# ---------------------------------------------------------------------------------------------------------
# RLOO
# ---------------------------------------------------------------------------------------------------------


def test_rloo_with_two_samples_is_the_difference_of_the_two():
    # groups (3, 1) and (-2, 4): A = 3 - 1 = 2, 1 - 3 = -2, -2 - 4 = -6, 4 - -2 = 6; on every real token
    advantages = estimators.rloo_advantages(torch.tensor([3.0, 1.0, -2.0, 4.0]), PADDED, samples_per_prompt=2)
    close(advantages, [[2.0, 2.0], [-2.0, -2.0], [-6.0, -6.0], [6.0, 0.0]])


def test_rloo_of_three_samples_by_hand():
    # R = 1, 2, 6: the others' means (2 + 6)/2 = 4, (1 + 6)/2 = 3.5, (1 + 2)/2 = 1.5
    #   A = 1 - 4 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5  (= 3/2 · (R - mean 3): -3, -1.5, 4.5)
    # A tie, R = 2, 2, 5: others (2 + 5)/2 = 3.5 twice, (2 + 2)/2 = 2: A = -1.5, -1.5, 3
    # All equal, R = 4, 4, 4: nothing to prefer, A = 0
    rewards = torch.tensor([1.0, 2.0, 6.0, 2.0, 2.0, 5.0, 4.0, 4.0, 4.0])
    advantages = estimators.rloo_advantages(rewards, torch.ones(9, 1), samples_per_prompt=3)
    close(advantages[:, 0], [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0, 0.0, 0.0, 0.0])


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="RLOO needs at least 2 responses per prompt, got 1"):
        estimators.rloo_advantages(torch.ones(2), torch.ones(2, 1), samples_per_prompt=1)


# ---------------------------------------------------------------------------------------------------------
# GRPO and Dr.GRPO
# ---------------------------------------------------------------------------------------------------------


def test_grpo_of_three_samples_by_hand():
    # R = 1, 2, 6: mean 3, deviations -2, -1, 3; unbiased var (4 + 1 + 9) / 2 = 7, std √7 = 2.6457513
    #   A = -2/√7 = -0.7559289, -1/√7 = -0.3779645, 3/√7 = 1.1338934
    # A tie, R = 2, 2, 5: mean 3, deviations -1, -1, 2; var (1 + 1 + 4) / 2 = 3, std √3 = 1.7320508
    #   A = -0.5773503, -0.5773503, 1.1547005
    rewards = torch.tensor([1.0, 2.0, 6.0, 2.0, 2.0, 5.0])
    advantages = estimators.grpo_advantages(rewards, torch.ones(6, 1), samples_per_prompt=3, eps=0.0)
    close(advantages[:, 0], [-0.7559289, -0.3779645, 1.1338934, -0.5773503, -0.5773503, 1.1547005])


def test_grpo_with_two_samples_is_plus_or_minus_one_over_root_two():
    # R = a, b: deviations ±(a - b)/2, unbiased var (a - b)²/2, std |a - b|/√2: A = ±1/√2 whatever a and b
    #   groups (5, 1) and (-2, 4) -> 0.7071068, -0.7071068, -0.7071068, 0.7071068; row 3's padding 0
    advantages = estimators.grpo_advantages(torch.tensor([5.0, 1.0, -2.0, 4.0]), PADDED, samples_per_prompt=2)
    root_half = 1 / math.sqrt(2)
    close(advantages, [[root_half] * 2, [-root_half] * 2, [-root_half] * 2, [root_half, 0.0]])


def test_grpo_group_of_equal_rewards_gets_zero_advantages():
    # 0.11 three times: the float32 mean lands 7.5e-9 off 0.11, and the std division would blow that hair up to
    # advantages of 0.0074; a group with nothing to compare gets exactly 0.
    rewards = torch.tensor([0.11, 0.11, 0.11, 3.0, 3.0, 3.0])
    close(estimators.grpo_advantages(rewards, torch.ones(6, 1), samples_per_prompt=3)[:, 0], [0.0] * 6)


def test_dr_grpo_does_not_divide_by_the_std():
    # R = 1, 2, 6: A = R - mean 3 = -2, -1, 3 (scale_rewards=False)
    advantages = estimators.grpo_advantages(
        torch.tensor([1.0, 2.0, 6.0]), torch.ones(3, 2), samples_per_prompt=3, scale_rewards=False
    )
    close(advantages, [[-2.0, -2.0], [-1.0, -1.0], [3.0, 3.0]])


def test_grpo_needs_two_samples():
    with pytest.raises(ValueError, match="GRPO needs at least 2 responses per prompt, got 1"):
        estimators.grpo_advantages(torch.ones(2), torch.ones(2, 1), samples_per_prompt=1)


# ---------------------------------------------------------------------------------------------------------
# REINFORCE++ and REINFORCE++-baseline
# ---------------------------------------------------------------------------------------------------------


def test_discounted_returns_by_hand():
    # γ = 0.5; row 0: G2 = 3, G1 = 2 + 0.5·3 = 3.5, G0 = 1 + 0.5·3.5 = 2.75
    #          row 1: G1 = 5, G0 = 4 + 0.5·5 = 6.5, padding (NaN) 0
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    close(estimators.discounted_returns(rewards, mask, gamma=0.5), [[2.75, 3.5, 3.0], [6.5, 5.0, 0.0]])
    # γ = 1: the plain reward-to-go, 6, 5, 3 and 9, 5
    close(estimators.discounted_returns(rewards, mask, gamma=1.0), [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]])


def test_reinforce_pp_normalises_the_returns_over_the_batch():
    # Scores 2 and -2 at the last tokens, γ = 1: G = 2, 2, 2 and -2, -2 (padding out)
    # over the 5 real tokens: mean 2/5 = 0.4; deviations 1.6 (x3), -2.4 (x2); squares 7.68 + 11.52 = 19.2
    # unbiased var 19.2 / 4 = 4.8, std 2.1908902: A = 1.6/2.1908902 = 0.7302967, -2.4/2.1908902 = -1.0954451
    rewards = torch.tensor([[0.0, 0.0, 2.0], [0.0, -2.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    close(
        estimators.reinforce_pp_advantages(rewards, mask, gamma=1.0), [[0.7302967] * 3, [-1.0954451, -1.0954451, 0.0]]
    )


def test_minus_group_mean_centres_each_group():
    # groups (1, 3) and (10, 20): means 2 and 15 -> -1, 1, -5, 5
    close(
        estimators.minus_group_mean(torch.tensor([1.0, 3.0, 10.0, 20.0]), samples_per_prompt=2), [-1.0, 1.0, -5.0, 5.0]
    )
