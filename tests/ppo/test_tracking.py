"""rlhf.ppo.tracking: the metrics a step reports."""

from __future__ import annotations

import pytest
import torch


def test_non_eos_fraction_reads_the_last_real_token():
    from rlhf.ppo.rollout import Rollout
    from rlhf.ppo.tracking import non_eos_fraction

    response_ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0], [0, 0, 0]])  # eos 2, pad 0
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    zeros = torch.zeros(4, 3)
    rollout = Rollout(
        query_ids=torch.ones(4, 1, dtype=torch.long),
        query_mask=torch.ones(4, 1),
        response_ids=response_ids,
        response_mask=mask,
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        scores=torch.zeros(4),
    )
    assert non_eos_fraction(rollout, eos_token_id=2) == pytest.approx(0.5)  # rows 1 and 3 never ended
