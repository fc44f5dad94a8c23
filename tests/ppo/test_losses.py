"""rlhf.ppo.losses against numbers worked out by hand (the arithmetic is in the comments; constants in by_hand)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo import losses
from tests.helpers.by_hand import LN2, close

# ---------------------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------------------


def test_ppo_policy_loss_by_hand():
    # ε = 0.2; ratios ρ = 1.5, 0.5, 1.1, 0.7 (old logprobs 0), advantages 1, 1, -1, -1; a 5th token is padding
    #   ρ=1.5 A=+1: max(-1.5, -1.2) = -1.2  clipped
    #   ρ=0.5 A=+1: max(-0.5, -0.8) = -0.5
    #   ρ=1.1 A=-1: max( 1.1,  1.1) =  1.1  (equal: not counted as clipped)
    #   ρ=0.7 A=-1: max( 0.7,  0.8) =  0.8  clipped
    # loss = (-1.2 - 0.5 + 1.1 + 0.8) / 4 = 0.05; clip_fraction = 2 / 4
    # approx_kl = mean(ρ - 1 - ln ρ) = (0.0945349 + 0.1931472 + 0.0046898 + 0.0566749) / 4 = 0.0872617
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7, 10.0]])
    logprobs = ratios.log().requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_fraction, approx_kl = losses.ppo_policy_loss(logprobs, torch.zeros(1, 5), advantages, mask, 0.2)
    close(loss, 0.05)
    close(clip_fraction, 0.5)
    close(approx_kl, 0.0872617)
    # d loss / d logp = -A ρ / 4 on unclipped tokens, 0 on clipped ones and padding:
    #   0, -(1)(0.5)/4 = -0.125, -(-1)(1.1)/4 = 0.275, 0, 0
    loss.backward()
    close(logprobs.grad, [[0.0, -0.125, 0.275, 0.0, 0.0]])


def test_ppo_policy_loss_on_policy_is_minus_mean_advantage():
    # ρ = 1 everywhere: loss = -mean(A) = -(2 - 1) / 2 = -0.5, nothing clipped, KL 0
    loss, clip_fraction, approx_kl = losses.ppo_policy_loss(
        torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2), 0.2
    )
    close(loss, -0.5)
    close(clip_fraction, 0.0)
    close(approx_kl, 0.0)


def test_ppo_value_loss_by_hand():
    # ε_v = 0.2, V_old = 1 everywhere
    #   V=1.5 R=2: unclipped (1.5-2)² = 0.25, clipped V 1.2: (1.2-2)² = 0.64 -> 0.64 clipped
    #   V=0.9 R=0: within the clip range: 0.81 both                     -> 0.81
    #   V=1.1 R=1: 0.01 both                                            -> 0.01
    #   V=1.5 R=1: unclipped 0.25, clipped (1.2-1)² = 0.04               -> 0.25
    #   5th token is padding
    # loss = 0.5 · (0.64 + 0.81 + 0.01 + 0.25) / 4 = 0.21375; clip_fraction = 1 / 4
    values = torch.tensor([[1.5, 0.9, 1.1, 1.5, 40.0]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 1.0, -40.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_fraction = losses.ppo_value_loss(values, torch.ones(1, 5), returns, mask, clip_eps_value=0.2)
    close(loss, 0.21375)
    close(clip_fraction, 0.25)


# ---------------------------------------------------------------------------------------------------------
# PPO-ptx language-modelling loss
# ---------------------------------------------------------------------------------------------------------


def test_sft_ptx_loss_by_hand():
    # vocabulary of 2; position 0 predicts labels[1], position 1 predicts labels[2]
    # logits [0, 0] -> p = 1/2 -> -ln 0.5 = 0.6931472; logits [ln 3, 0] -> p(0) = 3/4 -> -ln 0.75 = 0.2876821
    # labels 9, 1, 0: the first label is never predicted; loss = (0.6931472 + 0.2876821) / 2 = 0.4904146
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, 5.0]]])
    close(losses.sft_ptx_loss(logits, torch.tensor([[9, 1, 0]])), 0.4904146)
    # ignoring the last label leaves ln 2
    close(losses.sft_ptx_loss(logits, torch.tensor([[9, 1, -100]])), LN2)


def test_sft_ptx_loss_all_ignored_is_zero_with_a_gradient():
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    loss = losses.sft_ptx_loss(logits, torch.full((1, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------------------------------------------------
# loss aggregation (GRPO, Dr.GRPO) and the KL loss term
# ---------------------------------------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [6.0, float("nan"), float("nan")]])
ROW_MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])  # the second response is one token long


def test_aggregations_by_hand():
    # token_mean: (1 + 2 + 3 + 6) / 4 tokens = 3
    close(losses.aggregate(PER_TOKEN, ROW_MASK, "token_mean"), 3.0)
    # sequence_mean: each response's mean, 6/3 = 2 and 6/1 = 6, then their mean: 4
    close(losses.aggregate(PER_TOKEN, ROW_MASK, "sequence_mean"), 4.0)
    # dr_grpo with L = 3: each response's sum, 6 and 6, over L, then their mean: (6/3 + 6/3) / 2 = 2
    close(losses.aggregate(PER_TOKEN, ROW_MASK, "dr_grpo", max_tokens=3), 2.0)


def test_policy_loss_on_policy_under_each_aggregation():
    # ρ = 1: loss = -aggregate(A); A = 2 on the 3 tokens of row 0, -1 on the 1 token of row 1
    #   token_mean: -(6 - 1) / 4 = -1.25;  sequence_mean: -(2 + -1) / 2 = -0.5;  dr_grpo (L = 4): -(6 - 1) / 8
    advantages = torch.tensor([[2.0, 2.0, 2.0], [-1.0, 50.0, 50.0]])
    for aggregation, expected in (("token_mean", -1.25), ("sequence_mean", -0.5), ("dr_grpo", -0.625)):
        loss, _, _ = losses.ppo_policy_loss(
            torch.zeros(2, 3), torch.zeros(2, 3), advantages, ROW_MASK, 0.2, aggregation=aggregation, max_tokens=4
        )
        close(loss, expected)


def test_dr_grpo_aggregation_needs_the_constant():
    with pytest.raises(ValueError, match="dr_grpo aggregation needs max_tokens >= 1"):
        losses.aggregate(PER_TOKEN, ROW_MASK, "dr_grpo")


def test_kl_loss_is_k3_by_hand_with_its_gradient():
    # token 0: π = π_ref, log r = 0: D = 1 - 0 - 1 = 0
    # token 1: log π = -2, log π_ref = -1, log r = 1: D = e - 1 - 1 = 0.7182818;  token 2 is padding
    # token_mean: (0 + 0.7182818) / 2 = 0.3591409
    # dD/dlog π = 1 - e^{log r}: 0 and 1 - e = -1.7182818, over 2 tokens: 0, -0.8591409
    logprobs = torch.tensor([[-1.0, -2.0, -9.0]], requires_grad=True)
    ref_logprobs = torch.tensor([[-1.0, -1.0, 0.0]])
    loss = losses.kl_loss(logprobs, ref_logprobs, torch.tensor([[1, 1, 0]]))
    close(loss, 0.3591409)
    loss.backward()
    close(logprobs.grad, [[0.0, -0.8591409, 0.0]])
    # dr_grpo with L = 4: 0.7182818 / 4 = 0.1795705
    close(losses.kl_loss(logprobs, ref_logprobs, torch.tensor([[1, 1, 0]]), "dr_grpo", max_tokens=4), 0.1795705)
