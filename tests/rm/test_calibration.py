"""Calibration of the reward model against the labels, by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.rm.calibration import (
    calibration,
    expected_calibration_error,
    pair_predictions,
    reliability_bins,
    sigmoid,
    uncertainty_bins,
)

S1, S2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))  # σ(1) = 0.7310586, σ(2) = 0.8807971


def test_sigmoid_is_stable_both_ways():
    assert sigmoid(0.0) == 0.5 and sigmoid(2.0) == pytest.approx(S2) and sigmoid(-2.0) == pytest.approx(1 - S2)
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0


def test_each_pair_counts_both_ways_round_and_a_label_tie_is_half():
    probabilities, outcomes = pair_predictions([[2.0, 0.0, 0.0, 9.0]], [[1, 2, 2, 0]])  # slot 3 is padding
    assert probabilities == pytest.approx([S2, 1 - S2, S2, 1 - S2, 0.5, 0.5])
    assert outcomes == [1.0, 0.0, 1.0, 0.0, 0.5, 0.5]


def test_ece_by_hand():
    # A: rewards 2 > 0, labels agree. B: rewards tie, labels order them. C: rewards 1 > 0, labels disagree.
    rewards, ranks = [[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]], [[1, 2], [1, 2], [2, 1]]
    bins = reliability_bins(*pair_predictions(rewards, ranks))
    by_index = {round(b.low * 10): b for b in bins if b.pairs}
    assert sorted(by_index) == [1, 2, 5, 7, 8]
    assert (by_index[8].mean_probability, by_index[8].frequency) == (pytest.approx(S2), 1.0)  # A
    assert (by_index[5].pairs, by_index[5].mean_probability, by_index[5].frequency) == (2, 0.5, 0.5)  # B
    assert (by_index[7].mean_probability, by_index[7].frequency) == (pytest.approx(S1), 0.0)  # C
    assert (by_index[2].mean_probability, by_index[2].frequency) == (pytest.approx(1 - S1), 1.0)  # C reversed
    # ECE = (2 · (1 - σ(2)) + 0 + 2 · σ(1)) / 6 = (0.2384058 + 1.4621172) / 6 = 0.2834205: the same as the RM's
    # preferred side alone, (0.1192029 + 0 + 0.7310586) / 3.
    assert expected_calibration_error(bins) == pytest.approx((2 * (1 - S2) + 2 * S1) / 6)
    assert expected_calibration_error(bins) == pytest.approx(0.2834205, abs=1e-7)


def test_a_perfectly_calibrated_bin_and_the_empty_case():
    # p = 0.7 for i over j; the labels agree 7 times in 10 -> both bins (0.7 and 0.3) exact.
    margin = math.log(0.7 / 0.3)
    rewards = [[margin, 0.0]] * 10
    ranks = [[1, 2]] * 7 + [[2, 1]] * 3
    assert expected_calibration_error(reliability_bins(*pair_predictions(rewards, ranks))) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error(reliability_bins([], [])))
    assert reliability_bins([1.0], [1.0])[-1].pairs == 1  # p = 1 falls in the last bin


def test_calibration_summary():
    result = calibration([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]], [[1, 2], [1, 2], [2, 1]])
    assert result["pairs"] == 3 and len(result["bins"]) == 10
    assert result["ece"] == pytest.approx(0.2834205, abs=1e-7)
    assert result["bins"][5] == {"low": 0.5, "high": 0.6, "pairs": 2, "mean_probability": 0.5, "frequency": 0.5}
    assert "uncertainty" not in result


def test_an_ensemble_is_calibrated_on_its_mean_and_its_spread_is_set_against_its_errors():
    members = [[[1.0, 0.0, 0.0]], [[3.0, 0.0, 2.0]]]
    ranks = [[1, 2, 3]]
    # Margins (member 1, member 2): 0>1: 1, 3 (mean 2, std 1, right); 0>2: 1, 1 (std 0, right); 1>2: 0, -2 (mean -1,
    # std 1, wrong).
    bins = uncertainty_bins(members, ranks, bins=3)
    assert [(b.pairs, b.mean_std, b.error_rate) for b in bins] == [(1, 0.0, 0.0), (1, 1.0, 0.0), (1, 1.0, 1.0)]
    two = uncertainty_bins(members, ranks, bins=2)
    assert [(b.pairs, b.mean_std, b.error_rate) for b in two] == [(1, 0.0, 0.0), (2, 1.0, 0.5)]
    result = calibration(None, ranks, member_rewards=members)
    assert result == {**calibration([[2.0, 0.0, 1.0]], ranks), "uncertainty": result["uncertainty"]}
    assert len(result["uncertainty"]) == 3
