"""The demo's RM error table: each response named by what it is, each gold-ordered pair counted by kind."""

from __future__ import annotations

from rlhf.data.rankings import Ranking
from rlhf.demo.reward_errors import agreement_by_pair_kind, markdown, response_kind

SORT = "sort these words : plum cat dog answer :"
FIRST = "say the first word of : owl fox answer :"


def test_each_response_is_named_by_what_it_is():
    assert response_kind(SORT, " cat dog plum") == "ok"
    assert response_kind(SORT, "dog cat plum") == "perm"
    assert response_kind(SORT, "cat dog dog plum") == "slip"
    assert response_kind(SORT, "sure , here you go : cat dog plum") == "chat+ok"
    assert response_kind(SORT, "ok : plum cat dog") == "chat+perm"
    assert response_kind(FIRST, "the answer is : fox") == "chat+slip"
    assert response_kind(FIRST, "") == "slip"


def test_pairs_that_gold_orders_are_counted_by_kind_with_ties_half():
    # Gold: "owl" 1.0, "ok : owl" 2/4 = 0.5, "fox" 0; so pairs ok > chat+ok, ok > slip, chat+ok > slip.
    first = Ranking("a", FIRST, ("owl", "ok : owl", "fox"), (1, 2, 3))
    # Gold: "cat dog plum" 1.0 and "dog cat plum" 2/3: one pair, ok > perm. A second ranking of the same kind.
    sort_1 = Ranking("b", SORT, ("cat dog plum", "dog cat plum"), (1, 2))
    sort_2 = Ranking("c", SORT, ("dog cat plum", "cat dog plum"), (1, 2))  # the labeler erred; gold decides
    counts = agreement_by_pair_kind([first, sort_1, sort_2], [[0.1, 2.0, 1.0], [1.0, 1.0], [0.3, 0.2]])
    assert counts == {
        ("first", "ok > chat+ok"): [0.0, 1],  # 0.1 < 2.0
        ("first", "ok > slip"): [0.0, 1],  # 0.1 < 1.0
        ("first", "chat+ok > slip"): [1.0, 1],  # 2.0 > 1.0
        ("sort", "ok > perm"): [0.5, 2],  # a tie (half), then 0.2 < 0.3 for the right order
    }
    table = markdown(counts, min_pairs=1).splitlines()
    assert table[2:] == [
        "| first | ok > chat+ok | 0.00 | 1 |",
        "| first | ok > slip | 0.00 | 1 |",
        "| sort | ok > perm | 0.25 | 2 |",
        "| first | chat+ok > slip | 1.00 | 1 |",
        "| first | every pair | 0.333 | 3 |",
        "| sort | every pair | 0.250 | 2 |",
        "| all | every pair | 0.300 | 5 |",
    ]


def test_gold_ties_give_no_pair():
    tied = Ranking("d", SORT, ("cat dog", "dog plum"), (1, 2))  # both 2·2/(2+3) = 0.8 under gold
    assert agreement_by_pair_kind([tied], [[1.0, 0.0]]) == {}
