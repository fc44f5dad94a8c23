"""The reward model's parts: batching rankings, metrics by hand, the Trainer's loss, normalisation."""

import math

import pytest

from rlhf.rm.evaluation import kendall_tau_b, ranking_metrics


def test_ranking_metrics_by_hand():
    rewards = [[3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0], [0.5, 0.5, 9.0, 0.0]]
    ranks = [[1, 2, 3, 0], [1, 2, 0, 0], [1, 2, 2, 0]]
    metrics = ranking_metrics(rewards, ranks)
    # ranking 1: 3 pairs all right; ranking 2: 1 pair wrong; ranking 3: pairs (0,1) reward tie = 1/2, (0,2) wrong.
    assert metrics["pairwise_accuracy"] == pytest.approx((3 + 0 + 0.5) / 6)
    assert metrics["pairwise_accuracy_k3"] == pytest.approx(3.5 / 5)
    assert metrics["pairwise_accuracy_k2"] == 0.0
    # tau-b: ranking 1 = 1, ranking 2 = -1; ranking 3: pairs (0,1) tie in x only, (0,2) discordant,
    # (1,2) tie in y only -> (0 - 1) / sqrt((1 + 1) * (1 + 1)) = -0.5
    assert metrics["kendall_tau"] == pytest.approx((1 - 1 - 0.5) / 3)
    assert math.isnan(ranking_metrics([[1.0, 1.0]], [[1, 1]])["pairwise_accuracy"])


def test_kendall_tau_b_matches_the_textbook_example():
    # x = (1, 2, 3, 4), y = (1, 3, 2, 4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
