"""Decisions every rank must share, checked in a real 2-process gloo group."""

from __future__ import annotations

import os

import pytest
import torch.multiprocessing as mp

GIB = 1 << 30


def _decide_on_each_rank(rank: int, port: int, free_gib_by_rank: list[int], results) -> None:
    import torch.distributed as dist

    from rlhf.ppo.experience import decide_zero3_generation

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # A 1 GiB actor: gathering it once needs 2 GiB free on a rank.
        results[rank] = decide_zero3_generation(GIB, free_gib_by_rank[rank] * GIB)
    finally:
        dist.destroy_process_group()


def decisions(free_gib_by_rank: list[int]) -> list[str]:
    from rlhf.distributed import free_port

    context = mp.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _decide_on_each_rank, args=(free_port(), free_gib_by_rank, results), nprocs=2, start_method="spawn"
        )
        return [results[0], results[1]]


@pytest.mark.slow
def test_zero3_generation_auto_is_the_same_on_every_rank_and_the_poorest_rank_decides():
    # Alone, rank 0 would gather once (8 GiB free) and rank 1 would not (1 GiB): both must take per_step.
    assert decisions([8, 1]) == ["per_step", "per_step"]
    assert decisions([1, 8]) == ["per_step", "per_step"]
    assert decisions([8, 3]) == ["gather_once", "gather_once"]


def test_zero3_generation_auto_in_a_world_of_one_follows_free_memory():
    from rlhf.ppo.experience import decide_zero3_generation

    assert decide_zero3_generation(GIB, 3 * GIB) == "gather_once"
    assert decide_zero3_generation(GIB, 2 * GIB) == "per_step"


def _finish_with_work_queued_on_a_second_group(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from rlhf.distributed import finish_pending_work

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # As ZeRO-3 does: its gathers and reductions run on DeepSpeed's own group, not on the default one.
        data_parallel = dist.new_group([0, 1])
        works = [dist.all_reduce(torch.ones(4_000_000), group=data_parallel, async_op=True) for _ in range(4)]
        finish_pending_work()
        results[rank] = [work.is_completed() for work in works]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_finishing_waits_for_work_still_queued_on_every_group_not_only_the_default_one():
    from rlhf.distributed import free_port

    context = mp.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _finish_with_work_queued_on_a_second_group, args=(free_port(), results), nprocs=2, start_method="spawn"
        )
        assert results[0] == results[1] == [True] * 4
