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


def _collectives_on_each_rank(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from rlhf import distributed
    from rlhf.ppo.update import all_finite

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        value = torch.tensor([1.0 + rank, 10.0 * rank])  # rank 0: [1, 0]; rank 1: [2, 10]
        results[rank] = {
            "sum": distributed.all_reduce(value, "sum").tolist(),
            "min": distributed.all_reduce(value, "min").tolist(),
            "max": distributed.all_reduce(value, "max").tolist(),
            "input kept": value.tolist(),
            "all_ranks": distributed.all_ranks(rank == 0),
            "any_rank": distributed.any_rank(rank == 0),
            "mean_over_ranks": distributed.mean_over_ranks({"loss": 1.0 + rank, "kl": 4.0 * rank}),
            "all_finite": all_finite(torch.tensor([float("nan") if rank == 1 else 0.0])),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_collective_goes_through_all_reduce_and_agrees_on_every_rank():
    from rlhf.distributed import free_port

    context = mp.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_collectives_on_each_rank, args=(free_port(), results), nprocs=2, start_method="spawn")
        first, second = results[0], results[1]
    assert first == {**second, "input kept": [1.0, 0.0]}
    assert first["sum"] == [3.0, 10.0] and first["min"] == [1.0, 0.0] and first["max"] == [2.0, 10.0]
    assert first["all_ranks"] is False and first["any_rank"] is True
    assert first["mean_over_ranks"] == {"loss": 1.5, "kl": 2.0}
    assert first["all_finite"] is False  # one rank's NaN skips the step on both


def test_in_a_world_of_one_collectives_return_their_input():
    import torch

    from rlhf import distributed

    value = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce(value, "max") is value and distributed.sum_over_ranks(value) is value
    assert distributed.all_ranks(False) is False and distributed.any_rank(True) is True
    assert distributed.mean_over_ranks({"loss": 0.5}) == {"loss": 0.5}
