"""rlhf/ppo/reward_aggregation.py against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo.reward_aggregation import AGGREGATIONS, RewardAggregation, aggregate_rewards, ensemble_mean, ensemble_std

# Three responses scored by a 4-member ensemble.
#   row 0: 1, 2, 3, 6  mean 3, deviations -2 -1 0 3, squares 4 1 0 9 = 14: population var 14/4 = 3.5, std 1.8708
#   row 1: 0, 0, 0, 0  mean 0, std 0 (the members agree)
#   row 2: -1, 1, -1, 1  mean 0, population std 1 (sample std sqrt(4/3) = 1.1547: not ours)
SCORES = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, -1.0, 1.0]])


def test_mean_and_population_std_by_hand():
    torch.testing.assert_close(ensemble_mean(SCORES), torch.tensor([3.0, 0.0, 0.0]))
    torch.testing.assert_close(ensemble_std(SCORES), torch.tensor([3.5**0.5, 0.0, 1.0]))
    # The sample std (divided by k - 1) would be sqrt(14/3) and sqrt(4/3): it is not what we take.
    assert ensemble_std(SCORES)[2].item() != pytest.approx((4 / 3) ** 0.5)


def test_each_aggregation_by_hand():
    torch.testing.assert_close(aggregate_rewards(SCORES, "mean"), torch.tensor([3.0, 0.0, 0.0]))
    torch.testing.assert_close(aggregate_rewards(SCORES, "min"), torch.tensor([1.0, 0.0, -1.0]))
    # mean − λ·std with λ = 0.5: 3 − 0.5·1.8708 = 2.0646; 0 − 0 = 0; 0 − 0.5·1 = −0.5
    torch.testing.assert_close(
        aggregate_rewards(SCORES, "mean_minus_std", 0.5), torch.tensor([3.0 - 0.5 * 3.5**0.5, 0.0, -0.5])
    )
    # λ = 0 is the mean.
    torch.testing.assert_close(aggregate_rewards(SCORES, "mean_minus_std", 0.0), aggregate_rewards(SCORES, "mean"))


def test_with_two_members_mean_minus_one_std_is_the_minimum():
    # (a + b)/2 − |a − b|/2 = min(a, b): the population std of two numbers is half their distance.
    pairs = torch.tensor([[0.25, 1.75], [3.0, -1.0], [2.0, 2.0]])
    torch.testing.assert_close(aggregate_rewards(pairs, "mean_minus_std", 1.0), torch.tensor([0.25, -1.0, 2.0]))
    torch.testing.assert_close(aggregate_rewards(pairs, "mean_minus_std", 1.0), aggregate_rewards(pairs, "min"))


def test_one_member_gives_its_own_score_under_every_aggregation():
    single = torch.tensor([[0.5], [-2.0]])
    for method in AGGREGATIONS:
        torch.testing.assert_close(aggregate_rewards(single, method, 3.0), torch.tensor([0.5, -2.0]))


def test_an_empty_batch_and_bad_input():
    assert aggregate_rewards(torch.zeros(0, 3), "mean_minus_std").shape == (0,)
    with pytest.raises(ValueError, match="one of"):
        aggregate_rewards(SCORES, "median")
    with pytest.raises(ValueError, match=r"\(B, k\)"):
        aggregate_rewards(torch.zeros(3), "mean")


def test_the_config_callable_applies_its_method_and_coefficient():
    torch.testing.assert_close(
        RewardAggregation("mean_minus_std", 2.0)(SCORES), torch.tensor([3.0 - 2 * 3.5**0.5, 0.0, -2.0])
    )
    torch.testing.assert_close(RewardAggregation()(SCORES), ensemble_mean(SCORES))
