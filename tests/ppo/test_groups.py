"""How a prompt's group of responses stays whole: consecutive rows (rlhf.ppo.groups), on one rank (the prompt
order of rlhf.ppo.data), in one minibatch (Rollout.minibatches). Index math, checked on small cases by hand."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo import groups
from rlhf.ppo.data import prompts_for_step
from rlhf.ppo.rollout import Rollout


def test_groups_are_consecutive_rows():
    assert groups.repeat_each(["a", "b"], 3) == ["a", "a", "a", "b", "b", "b"]
    assert list(groups.group_rows(1, 3)) == [3, 4, 5]
    # rows 0-5 in groups of 2: [[0, 1], [2, 3], [4, 5]]
    assert groups.grouped(torch.arange(6), 2).tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="5 rows do not split into groups of 2"):
        groups.grouped(torch.arange(5), 2)


def test_shuffled_rows_move_whole_groups():
    order = groups.shuffled_rows_by_group(12, 3, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(12))
    # Every consecutive slice of 3 is one group, its rows in their order: g·3, g·3 + 1, g·3 + 2.
    for start in range(0, 12, 3):
        first = order[start].item()
        assert first % 3 == 0 and order[start : start + 3].tolist() == [first, first + 1, first + 2]


def test_shuffled_rows_of_single_samples_are_randperm_itself():
    # n = 1: the same permutation as before groups existed, so earlier runs shuffle their minibatches as they did.
    ours = groups.shuffled_rows_by_group(10, 1, torch.Generator().manual_seed(7))
    assert ours.tolist() == torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()


def test_each_rank_samples_whole_groups_of_the_prompts_it_would_have_had():
    prompts = list(range(10))
    # 2 prompts per rank, 2 ranks, n = 3: rank r repeats its own 2 prompts 3 times each, consecutively.
    alone = [prompts_for_step(prompts, 1, 2, 2, rank, seed=0) for rank in (0, 1)]
    grouped = [prompts_for_step(prompts, 1, 2, 2, rank, seed=0, samples_per_prompt=3) for rank in (0, 1)]
    for mine, theirs in zip(alone, grouped):
        assert theirs == [mine[0]] * 3 + [mine[1]] * 3
    # The groups of the two ranks are different prompts: none spans both.
    assert not set(grouped[0]) & set(grouped[1])
    # A resumed run asks for the same step and gets the same groups.
    assert prompts_for_step(prompts, 1, 2, 2, 1, seed=0, samples_per_prompt=3) == grouped[1]


def rollout_of_groups(num_groups: int, samples_per_prompt: int) -> Rollout:
    """Row b's query id is its group, its response id its place in the group."""
    rows = num_groups * samples_per_prompt
    group_of_row = torch.arange(rows) // samples_per_prompt
    zeros = torch.zeros(rows, 1)
    return Rollout(
        query_ids=group_of_row[:, None],
        query_mask=torch.ones(rows, 1),
        response_ids=(torch.arange(rows) % samples_per_prompt)[:, None],
        response_mask=torch.ones(rows, 1),
        logprobs=zeros,
        ref_logprobs=zeros,
        values=None,
        scores=torch.zeros(rows),
    )


def test_minibatches_hold_whole_groups_in_order():
    rollout = rollout_of_groups(num_groups=6, samples_per_prompt=4)
    seen = []
    for minibatch in rollout.minibatches(8, torch.Generator().manual_seed(1), samples_per_prompt=4):
        group_ids = minibatch.query_ids[:, 0].tolist()
        # 8 rows: two groups of 4, each whole and in its order 0, 1, 2, 3.
        assert group_ids[:4] == [group_ids[0]] * 4 and group_ids[4:] == [group_ids[4]] * 4
        assert minibatch.response_ids[:, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
        seen += [group_ids[0], group_ids[4]]
    assert sorted(seen) == list(range(6))  # every group once per epoch


def test_a_minibatch_that_would_split_a_group_is_refused():
    with pytest.raises(ValueError, match="minibatch size must be a positive multiple of 4; got 6"):
        next(rollout_of_groups(3, 4).minibatches(6, samples_per_prompt=4))
