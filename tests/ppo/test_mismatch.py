"""rlhf/ppo/mismatch.py and the weighted policy loss, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo.losses import ppo_policy_loss
from rlhf.ppo.mismatch import logprob_gap, truncated_is_weights


def test_the_gap_is_the_mean_absolute_difference_and_k3_over_the_real_tokens():
    engine = torch.tensor([[-1.0, -2.0, -5.0], [-0.5, 0.0, 0.0]])
    actor = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    gap, kl = logprob_gap(engine, actor, mask)
    # Δ = 0.5, 0, 0 on the three real tokens; k3(Δ) = exp(-Δ) - 1 + Δ.
    assert gap == pytest.approx(0.5 / 3)
    assert kl == pytest.approx((math.exp(-0.5) - 1 + 0.5) / 3)
    assert logprob_gap(engine, engine, mask) == (0.0, 0.0)
    assert logprob_gap(engine, actor, torch.zeros_like(mask)) == (0.0, 0.0)


def test_truncated_is_weights_are_the_ratio_capped_and_detached():
    old = torch.tensor([[-1.0, -1.0, -3.0]], requires_grad=True)
    engine = torch.tensor([[-1.0, -2.0, -1.0]])
    weights = truncated_is_weights(old, engine, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 2.0, math.exp(-2.0)]]))  # e^1 capped at 2
    assert not weights.requires_grad


def test_token_weights_scale_each_tokens_policy_loss():
    logprobs = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    plain, _, _ = ppo_policy_loss(logprobs, logprobs, advantages, mask, 0.2)
    weighted, _, _ = ppo_policy_loss(
        logprobs, logprobs, advantages, mask, 0.2, token_weights=torch.tensor([[0.5, 2.0]])
    )
    # ρ = 1: per-token losses -A = -1 and 2; mean 0.5 plain, (-0.5 + 4) / 2 = 1.75 weighted.
    assert plain.item() == pytest.approx(0.5)
    assert weighted.item() == pytest.approx(1.75)
