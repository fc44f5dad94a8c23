"""rlhf.evaluation: a tie counts half, and gold scorers found by name."""

from __future__ import annotations

import pytest


def test_win_rate_counts_ties_half():
    from rlhf.ppo.evaluation import win_rate

    assert win_rate([1.0, 0.5, 0.2, 0.7], [0.5, 0.5, 0.9, 0.1]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


@pytest.mark.parametrize("first, second, outcome", [(1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (0.3, 0.3, 0.5)])
def test_a_pair_is_won_lost_or_tied_for_half(first, second, outcome):
    from rlhf.evaluation import pair_outcome

    assert pair_outcome(first, second) == outcome


def test_the_demos_scorer_is_found_through_its_entry_point():
    from rlhf.demo.task import gold_score, prompt_operation
    from rlhf.evaluation import gold_scorer, task_of_prompt

    assert gold_scorer("demo") is gold_score and task_of_prompt("demo") is prompt_operation


def test_a_registered_scorer_is_found_by_name_and_an_unknown_name_is_one_line(monkeypatch):
    from rlhf import evaluation
    from rlhf.errors import ConfigError

    monkeypatch.setattr(evaluation, "_REGISTERED", {})
    evaluation.register_gold_scorer("length", evaluation.GoldScorer(score=lambda prompt, response: len(response)))
    assert evaluation.gold_scorer("length")("p", "four") == 4 and evaluation.task_of_prompt("length") is None
    with pytest.raises(ConfigError, match=r"^unknown gold_scorer 'nope' \(known: demo, length\)$"):
        evaluation.gold_scorer("nope")
