"""Statistics PPO takes over a batch are those of all ranks together: on 2 processes (gloo), advantage whitening
and the running score moments equal the global ones computed by hand, as if one process held the whole batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf.distributed import free_port

# One sequence per rank. Rank 0: advantages 1, 2, 3 on three real tokens; rank 1: 6 on its one real token,
# then padding that holds garbage. All four real entries: mean 3, squared deviations 4 + 1 + 0 + 9 = 14,
# unbiased variance 14 / 3, so the whitened values are (x - 3) / sqrt(14 / 3).
ADVANTAGES = {0: ([[1.0, 2.0, 3.0]], [[1, 1, 1]]), 1: ([[6.0, 99.0, -99.0]], [[1, 0, 0]])}
STD = math.sqrt(14 / 3)
WHITENED = {0: [[-2 / STD, -1 / STD, 0.0]], 1: [[3 / STD, 0.0, 0.0]]}

# Two batches of scores. After the first, the moments are those of 1..5 (mean 3, unbiased variance 2.5); after the
# second, of 1, 2, 3, 4, 5, 0, 12: mean 27 / 7, Σx² = 199, unbiased variance (199 - 27² / 7) / 6 = 332 / 21.
SCORES = {0: ([1.0, 2.0, 3.0], [0.0]), 1: ([4.0, 5.0], [12.0])}
MOMENTS = [(3.0, math.sqrt(2.5), 5), (27 / 7, math.sqrt(332 / 21), 7)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    from rlhf.ppo.rewards import RunningMoments, masked_whiten

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        values, mask = (torch.tensor(x) for x in ADVANTAGES[rank])
        whitened = masked_whiten(values, mask, across_ranks=True)
        moments = RunningMoments()
        seen = []
        for batch in SCORES[rank]:
            moments.update(torch.tensor(batch), across_ranks=True)
            seen.append((moments.mean, moments.std, moments.count))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"whitened": whitened.tolist(), "moments": seen}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=2, join=True)
    return {rank: json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)}


@pytest.mark.slow
def test_two_ranks_with_one_sequence_each_whiten_with_the_global_mean_and_std(results):
    from rlhf.ppo.rewards import masked_whiten

    for rank in (0, 1):
        torch.testing.assert_close(torch.tensor(results[rank]["whitened"]), torch.tensor(WHITENED[rank]))
    # Per-rank whitening would have wiped rank 1's only advantage to 0: its sequence-level signal.
    alone, mask = (torch.tensor(x) for x in ADVANTAGES[1])
    assert masked_whiten(alone, mask)[0, 0].item() == 0.0


@pytest.mark.slow
def test_running_score_moments_are_the_same_on_every_rank_and_those_of_all_scores(results):
    for rank in (0, 1):
        for got, want in zip(results[rank]["moments"], MOMENTS):
            assert got == pytest.approx(list(want))
