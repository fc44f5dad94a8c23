"""rlhf.ppo.rollout: the typed PPO batch and its minibatches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhf.ppo.rollout import PPOStats, Rollout


def make_rollout(batch_size: int = 5) -> Rollout:
    # Every field's row b holds the number b, so a row's fields can be checked to stay together.
    rows = torch.arange(batch_size)
    grid = rows[:, None].expand(batch_size, 3)
    return Rollout(
        query_ids=grid.clone(),
        query_mask=torch.ones(batch_size, 3, dtype=torch.long),
        response_ids=grid.clone(),
        response_mask=torch.ones(batch_size, 3, dtype=torch.long),
        logprobs=grid.float(),
        ref_logprobs=grid.float(),
        values=grid.float(),
        scores=rows.float(),
    )


def test_fields_computed_later_start_as_none():
    rollout = make_rollout()
    assert (rollout.rewards, rollout.advantages, rollout.returns) == (None, None, None)
    filled = dataclasses.replace(rollout, rewards=torch.zeros(5, 3))
    assert filled.rewards.shape == (5, 3)
    assert len(filled) == 5


def test_mismatched_rows_are_rejected():
    with pytest.raises(ValueError, match="scores"):
        dataclasses.replace(make_rollout(), scores=torch.zeros(4))


def test_to_moves_every_tensor_and_keeps_none():
    moved = make_rollout().to("cpu")
    assert moved.query_ids.device.type == "cpu"
    assert moved.returns is None
    assert torch.equal(moved.values, make_rollout().values)


def test_minibatches_cover_every_row_once_with_rows_kept_together():
    rollout = dataclasses.replace(make_rollout(), advantages=torch.arange(5).float()[:, None].expand(5, 3))
    batches = list(rollout.minibatches(2, torch.Generator().manual_seed(0)))
    assert [len(batch) for batch in batches] == [2, 2, 1]  # 5 rows in minibatches of 2: the last holds 1
    seen = torch.cat([batch.scores for batch in batches])
    assert sorted(seen.tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]
    for batch in batches:
        for field in ("query_ids", "response_ids", "logprobs", "values", "advantages"):
            assert torch.equal(getattr(batch, field)[:, 0].float(), batch.scores)
        assert batch.returns is None


def test_minibatch_order_follows_the_generator():
    def order(seed):
        return [batch.scores.tolist() for batch in make_rollout().minibatches(2, torch.Generator().manual_seed(seed))]

    assert order(1) == order(1)
    assert order(1) != order(2) or order(1) != order(3)


def test_minibatch_size_must_be_positive():
    with pytest.raises(ValueError):
        list(make_rollout().minibatches(0))


def test_ppo_stats_is_a_named_tuple():
    zero = torch.tensor(0.0)
    stats = PPOStats(*([zero] * len(PPOStats._fields)))
    assert stats._fields == (
        "loss",
        "policy_loss",
        "value_loss",
        "ptx_loss",
        "clip_fraction",
        "value_clip_fraction",
        "approx_kl",
        "entropy",
        "ratio",
        "kl_loss",
    )
    assert stats.approx_kl is zero
