"""rlhf.ppo.data: which prompts each step and rank takes."""

from __future__ import annotations


def test_prompt_positions_follow_from_the_step_and_split_by_rank():
    from rlhf.ppo.data import prompts_for_step

    prompts = list(range(10))
    epoch = [prompts_for_step(prompts, step, 2, 1, 0, seed=0) for step in range(5)]
    assert sorted(sum(epoch, [])) == prompts  # one epoch visits every prompt once
    assert prompts_for_step(prompts, 3, 2, 1, 0, seed=0) == epoch[3]  # no state: a resumed run gets the same
    assert prompts_for_step(prompts, 5, 2, 1, 0, seed=0) != epoch[0]  # a new epoch is reshuffled
    ranks = [prompts_for_step(prompts, 1, 2, 2, rank, seed=0) for rank in (0, 1)]
    assert ranks[0] + ranks[1] == epoch[2] + epoch[3]  # rank r takes its slice of the step's prompts
