"""Agreement between labelers, and Krippendorff's α, against cases worked by hand."""

from __future__ import annotations

import math

import pytest

from rlhf.data.rankings import Ranking
from rlhf.labels.agreement import krippendorff_alpha, labeler_agreement, order_agreement


def test_order_agreement_same_opposite_and_one_tie():
    assert order_agreement(1, 2, 1, 3) == 1.0
    assert order_agreement(1, 2, 2, 1) == 0.0
    assert order_agreement(1, 1, 1, 2) == 0.5 and order_agreement(2, 1, 3, 3) == 0.5
    assert order_agreement(2, 2, 1, 1) == 1.0  # both tie it


def test_krippendorff_alpha_of_two_coders_by_hand():
    # Units (1, 1), (2, 2), (1, 2): o_11 = 2, o_22 = 2, o_12 = o_21 = 1; n_1 = n_2 = 3, n = 6.
    # Ordinal δ²_12 = (n_1 + n_2 - (n_1 + n_2) / 2)² = 9: α = 1 - 5 · (2 · 9) / (2 · 3 · 3 · 9) = 1 - 90/162 = 4/9.
    assert krippendorff_alpha([[1, 1], [2, 2], [1, 2]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([[1, 1], [2, 2], [1, 2]], "nominal") == pytest.approx(4 / 9)  # two values: the same


def test_krippendorff_alpha_on_the_textbook_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units, values 1-5,
    missing data. Its coincidence matrix, worked by hand there, gives α = 0.743 (nominal), 0.815 (ordinal) and 0.849
    (interval); unit 12 has one value and does not pair."""
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[row[u] for row in coders if row[u] is not None] for u in range(12)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


def test_krippendorff_alpha_perfect_and_undefined():
    assert krippendorff_alpha([[1, 1], [2, 2, 2], [3, 3]]) == 1.0
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1]]))  # one value: nothing to disagree on
    assert math.isnan(krippendorff_alpha([[1], [2]]))  # no unit pairs
    with pytest.raises(ValueError):
        krippendorff_alpha([[1, 1]], "ratio")


def _rankings() -> list[Ranking]:
    p1, p2 = "sort these words : b a answer :", "reverse these words : a b answer :"
    return [
        Ranking("1", p1, ("x", "y", "z"), (1, 2, 3), "alice"),
        Ranking("2", p1, ("z", "x", "y"), (2, 1, 3), "bob"),  # x, y, z -> 1, 3, 2
        Ranking("3", p1, ("x", "y", "z"), (1, 1, 2), "carol"),
        Ranking("4", p1, ("x", "y", "z"), (3, 2, 1), "alice"),  # alice again: her first ranking counts
        Ranking("5", p2, ("u", "v"), (1, 2), "alice"),
        Ranking("6", p2, ("u", "v"), (2, 1), "bob"),
        Ranking("7", p2, ("u", "w"), (1, 2), "carol"),  # other responses: not shared
        Ranking("8", p2, ("u", "v"), (1, 2), None),  # no annotator id
    ]


def test_labeler_agreement_by_hand():
    agreement = labeler_agreement(_rankings())
    # p1, pairs (x,y), (x,z), (y,z): alice-bob 1, 1, 0; alice-carol ½, 1, 1; bob-carol ½, 1, 0. p2: alice-bob 0.
    assert (agreement.sets, agreement.shared_pairs) == (2, 10)
    assert agreement.pairwise == pytest.approx(6 / 10)
    assert agreement.by_annotator == {
        "alice": (pytest.approx(4.5 / 7), 7),
        "bob": (pytest.approx(3.5 / 7), 7),
        "carol": (pytest.approx(4 / 6), 6),
    }
    # Units x (1,1,1), y (2,3,1), z (3,2,2), u (1,2), v (2,1): o_11 = 3, o_12 = 2.5, o_13 = 0.5, o_22 = 1,
    # o_23 = 1.5; n = (6, 5, 2), 13 in all. δ²_12 = 5.5², δ²_13 = 9², δ²_23 = 3.5².
    # Observed 2 (2.5·30.25 + 0.5·81 + 1.5·12.25) = 269; expected 2 (30·30.25 + 12·81 + 10·12.25) = 4004.
    # α = 1 - 12 · 269 / 4004 = 194/1001.
    assert agreement.alpha == pytest.approx(194 / 1001)
    assert agreement.to_dict()["by_annotator"]["carol"] == [pytest.approx(4 / 6), 6]


def test_no_overlap_gives_an_empty_agreement():
    agreement = labeler_agreement([r for r in _rankings() if r.annotator != "bob" and r.id != "3"])
    assert agreement.sets == 0 and agreement.shared_pairs == 0 and math.isnan(agreement.pairwise)
