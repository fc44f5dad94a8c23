"""Best-of-N's KL and selection, and Gao et al.'s fits, against numbers worked out by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from rlhf.evaluate.overoptimisation import (
    best_of_n_curve,
    best_of_n_expectation,
    best_of_n_index,
    best_of_n_kl,
    fit_curve,
    fit_gao,
    gao_best_of_n,
    gao_rl,
    interpolate,
    sqrt_kl,
)


def test_best_of_n_kl_is_log_n_minus_n_minus_1_over_n():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.6931472 - 0.5)  # 0.1931472
    assert best_of_n_kl(4) == pytest.approx(1.3862944 - 0.75)  # 0.6362944
    assert best_of_n_kl(64) == pytest.approx(4.1588831 - 0.984375)  # 3.1745081
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_keeps_the_highest_reward_and_the_first_of_a_tie():
    assert best_of_n_index([0.1, 0.3, 0.2]) == 1
    assert best_of_n_index([0.5, 0.2, 0.5]) == 0
    assert best_of_n_index([-1.0]) == 0


def test_best_of_n_expectation_by_hand():
    rm, gold = [0.1, 0.3, 0.2], [1.0, 0.0, 0.5]
    # n = 2: {0,1} keeps 1 (gold 0), {0,2} keeps 2 (gold 0.5), {1,2} keeps 1 (gold 0): mean 1/6.
    assert best_of_n_expectation(rm, gold, 2) == pytest.approx(1 / 6)
    assert best_of_n_expectation(rm, rm, 2) == pytest.approx((0.3 + 0.2 + 0.3) / 3)
    assert best_of_n_expectation(rm, gold, 1) == pytest.approx(0.5)  # the plain mean
    assert best_of_n_expectation(rm, gold, 3) == 0.0  # the best of all
    # A tie keeps the earlier sample in every subset that holds both.
    assert best_of_n_expectation([0.5, 0.5], [1.0, 0.0], 2) == 1.0
    with pytest.raises(ValueError):
        best_of_n_expectation(rm, gold, 4)


def test_best_of_n_expectation_is_the_mean_over_every_subset():
    rm = [0.3, -1.0, 0.3, 2.0, 0.7, 0.7, -0.2]
    gold = [0.1, 0.9, 0.4, 0.2, 0.8, 0.6, 0.5]
    for n in range(1, len(rm) + 1):
        subsets = list(itertools.combinations(range(len(rm)), n))
        kept = [subset[best_of_n_index([rm[i] for i in subset])] for subset in subsets]
        assert best_of_n_expectation(rm, gold, n) == pytest.approx(sum(gold[i] for i in kept) / len(subsets))


def test_best_of_n_curve_averages_prompts():
    points = best_of_n_curve([[0.1, 0.3, 0.2], [1.0, 0.0, 0.0]], [[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]], [1, 2])
    assert [p["n"] for p in points] == [1, 2]
    assert points[1]["kl"] == pytest.approx(best_of_n_kl(2)) and points[1]["d"] == pytest.approx(best_of_n_kl(2) ** 0.5)
    # Prompt 2's pairs keep {0,1} -> 0, {0,2} -> 0, {1,2} -> 1 (a tie: the first): gold 0, 0, 1 -> 1/3.
    assert points[1]["gold_score"] == pytest.approx((1 / 6 + 1 / 3) / 2)
    assert points[0]["gold_score"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert "gold_score" not in best_of_n_curve([[0.0, 1.0]], None, [1])[0]


def test_gao_forms():
    assert gao_best_of_n(2.0, 1.0, 0.25) == pytest.approx(1.0)  # 2 (1 - 0.5)
    assert gao_rl(math.e, 1.0, 0.5) == pytest.approx(math.e / 2)  # e (1 - 0.5 log e)
    assert gao_rl(0.0, 1.0, 0.5) == 0.0


def test_the_best_of_n_fit_recovers_an_exact_curve():
    d = [0.5, 1.0, 2.0]
    fit = fit_gao("best_of_n", d, [gao_best_of_n(x, 1.0, 0.25) for x in d])  # 0.4375, 0.75, 1.0
    assert (fit.alpha, fit.beta) == (pytest.approx(1.0), pytest.approx(0.25))
    assert fit.r_squared == pytest.approx(1.0) and fit.rmse == pytest.approx(0.0, abs=1e-12)


def test_the_best_of_n_fit_by_hand_with_residuals():
    # d = 1, 2, 3 and R = 1, 2, 2: x = d, z = -d², Σx² = 14, Σz² = 98, Σxz = -36, ΣxR = 11, ΣzR = -27, D = 76.
    # α = (98·11 - 36·27) / 76 = 53/38, β = (14·-27 + 36·11) / 76 = 9/38; the fit gives 22/19, 35/19, 39/19,
    # residuals -3/19, 3/19, -1/19: SS_res = 1/19; SS_tot = 2/3, so R² = 1 - 3/38 = 35/38 and RMSE = sqrt(1/57).
    fit = fit_gao("best_of_n", [1.0, 2.0, 3.0], [1.0, 2.0, 2.0])
    assert fit.alpha == pytest.approx(53 / 38) and fit.beta == pytest.approx(9 / 38)
    assert fit(2.0) == pytest.approx(35 / 19)
    assert fit.r_squared == pytest.approx(35 / 38) and fit.rmse == pytest.approx(math.sqrt(1 / 57))
    assert fit.points == 3


def test_the_rl_fit_recovers_an_exact_curve():
    d = [1.0, math.e, math.e**2]  # d log d = 0, e, 2e²
    gains = [gao_rl(x, 2.0, 1.0) for x in d]  # 2, e, 0
    assert gains == pytest.approx([2.0, math.e, 0.0], abs=1e-12)
    fit = fit_gao("rl", d, gains)
    assert (fit.alpha, fit.beta) == (pytest.approx(2.0), pytest.approx(1.0))
    assert fit.r_squared == pytest.approx(1.0)


def test_a_fit_needs_two_distances_it_can_tell_apart():
    assert fit_gao("best_of_n", [1.0], [1.0]) is None
    assert fit_gao("best_of_n", [1.0, 1.0], [1.0, 2.0]) is None
    assert fit_gao("rl", [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]) is None  # d log d = 0 at 0 and 1: β is free
    assert fit_gao("best_of_n", [], []) is None
    with pytest.raises(ValueError):
        fit_gao("linear", [1.0], [1.0])


def test_fit_curve_takes_the_d_0_point_as_the_baseline():
    points = [{"d": 0.0, "gold": 0.5}, {"d": 2.0, "gold": 1.5}, {"d": 1.0, "gold": 1.25}, {"d": 3.0, "gold": None}]
    fit = fit_curve("best_of_n", points, "gold")  # gains 0.75 at d = 1 and 1.0 at d = 2: α = 1, β = 0.25
    assert (fit.alpha, fit.beta, fit.points) == (pytest.approx(1.0), pytest.approx(0.25), 2)
    assert fit_curve("best_of_n", points[1:], "gold") is None  # no d = 0 point: no baseline


def test_interpolate_between_points_and_never_beyond():
    xs, ys = [0.0, 1.0, 2.0], [0.0, 1.0, 3.0]
    assert interpolate(1.5, xs, ys) == pytest.approx(2.0)
    assert interpolate(0.0, xs, ys) == 0.0 and interpolate(2.0, xs, ys) == 3.0
    assert interpolate(2.1, xs, ys) is None and interpolate(-0.1, xs, ys) is None
    assert interpolate(1.0, [1.0], [4.0]) == 4.0 and interpolate(1.0, [], []) is None


def test_sqrt_kl_treats_a_slightly_negative_estimate_as_zero():
    assert sqrt_kl(-1e-4) == 0.0 and sqrt_kl(4.0) == 2.0


def test_curve_fits_fits_the_scores_the_points_carry():
    from rlhf.evaluate.overoptimisation import curve_fits

    points = best_of_n_curve([[0.1, 0.3, 0.2, 0.0]], None, [1, 2, 4])
    assert list(curve_fits("best_of_n", points)) == ["rm_score"]
    with_gold = curve_fits("best_of_n", best_of_n_curve([[0.1, 0.3, 0.2, 0.0]], [[1.0, 0.0, 0.5, 0.5]], [1, 2, 4]))
    assert list(with_gold) == ["rm_score", "gold_score"] and with_gold["gold_score"].points == 2
