import random
from collections import Counter

import pytest

from rlhf.demo.labelers import Labeler, make_labelers, rank_responses
from rlhf.demo.task import correct_answer, gold_score, make_split, parse_prompt

SORT = "sort these words : plum cat owl answer :"


def test_correct_answers():
    assert correct_answer(parse_prompt(SORT)) == ["cat", "owl", "plum"]
    assert correct_answer(parse_prompt("reverse these words : a b c answer :")) == ["c", "b", "a"]
    assert correct_answer(parse_prompt("say the last word of : a b c answer :")) == ["c"]


@pytest.mark.parametrize(
    "response, expected",
    [
        ("cat owl plum", 1.0),
        ("", 0.0),
        # chatter "ok :" adds 2 words: 2*3 / (5 + 3) = 0.75
        ("ok : cat owl plum", 0.75),
        # one word dropped: 2*2 / (2 + 3) = 0.8
        ("cat plum", 0.8),
        # adjacent swap keeps 2 of 3 in order: 2*2 / (3 + 3) = 0.6667
        ("owl cat plum", 4 / 6),
    ],
)
def test_gold_score_is_graded(response, expected):
    assert gold_score(SORT, response) == pytest.approx(expected)


def test_demonstrations_are_imperfect_like_people():
    records = make_split(2000, seed=1)
    scores = [gold_score(r["prompt"], r["completion"]) for r in records]
    perfect = sum(s == 1.0 for s in scores) / len(scores)
    # (1 - 0.35 chatter) * (1 - 0.25 slips) ~= 0.49 are perfect; the rest are good but worse.
    assert 0.42 < perfect < 0.56
    assert 0.68 < sum(scores) / len(scores) < 0.82  # chatter costs most on one-word answers
    assert len({r["prompt"] for r in records}) == 2000


def test_splits_are_deterministic_and_disjoint():
    first = make_split(50, seed=3)
    assert first == make_split(50, seed=3)
    other = make_split(50, seed=4, exclude={r["prompt"] for r in first})
    assert not {r["prompt"] for r in first} & {r["prompt"] for r in other}
    with pytest.raises(ValueError, match="not a demo prompt"):
        parse_prompt("tell me a story")


def test_careful_labelers_agree_with_gold_more_than_hasty_ones():
    rng = random.Random(0)
    gold = [1.0, 0.8, 0.6, 0.4]

    def agreement(labeler):
        ranks = [rank_responses(labeler, gold, rng) for _ in range(500)]
        return sum(r == [1, 2, 3, 4] for r in ranks) / 500

    careful, hasty = agreement(Labeler("a", 0.02)), agreement(Labeler("b", 0.3))
    assert careful > 0.95 and hasty < 0.5


def test_equal_quality_is_sometimes_tied():
    rng = random.Random(0)
    ranks = [tuple(rank_responses(Labeler("a", 0.05), [0.9, 0.9, 0.1], rng)) for _ in range(400)]
    counts = Counter(ranks)
    assert counts[(1, 1, 2)] > 100  # tied as equals
    assert counts[(1, 2, 3)] + counts[(2, 1, 3)] > 100  # or ordered arbitrarily
    assert all(r[2] == max(r) for r in ranks)  # the bad one is never above the good ones at this temperature


def test_labelers_differ():
    labelers = make_labelers(4, seed=0)
    assert len({labeler.temperature for labeler in labelers}) == 4 and len({labeler.name for labeler in labelers}) == 4
