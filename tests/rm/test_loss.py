"""rlhf.rm.loss against numbers worked out by hand (the arithmetic is in the comments; constants in by_hand)."""

from __future__ import annotations

import pytest
import torch

from rlhf.rm import loss as rm_loss
from tests.helpers.by_hand import NAN, SP1, SP2, SP3, close

# ---------------------------------------------------------------------------------------------------------
# kway_ranking_loss
# ---------------------------------------------------------------------------------------------------------


def test_kway_loss_single_ranking_of_three():
    # rewards 2 > 1 > 0 ranked 1, 2, 3: pairs (0,1) margin 1, (0,2) margin 2, (1,2) margin 1
    # loss = (SP1 + SP2 + SP1) / 3 = (0.3132617 + 0.1269280 + 0.3132617) / 3 = 0.2511505
    loss = rm_loss.kway_ranking_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]))
    close(loss, (2 * SP1 + SP2) / 3)
    close(loss, 0.2511505)


def test_kway_loss_ranks_need_not_follow_slot_order():
    # slot 1 is ranked best: the only pair is (1, 0) with margin 3 - 0 = 3 -> SP3 = 0.0485874
    loss = rm_loss.kway_ranking_loss(torch.tensor([[0.0, 3.0]]), torch.tensor([[2, 1]]))
    close(loss, SP3)
    # the same rewards ranked the other way round: margin 0 - 3 = -3 -> log(1 + e^3) = 3.0485874
    loss = rm_loss.kway_ranking_loss(torch.tensor([[0.0, 3.0]]), torch.tensor([[1, 2]]))
    close(loss, 3.0485874)


def test_kway_loss_tied_ranks_form_no_pair():
    # ranks 1, 1, 2: slots 0 and 1 are tied (no pair); pairs (0,2) margin 1 - 0 = 1, (1,2) margin 0 - 0 = 0
    # loss = (SP1 + LN2) / 2 = (0.3132617 + 0.6931472) / 2 = 0.5032044
    loss = rm_loss.kway_ranking_loss(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1, 1, 2]]))
    close(loss, 0.5032044)


def test_kway_loss_variable_k_with_padded_slots_holding_nan():
    # row 0: K = 3, the ranking above: 0.2511505
    # row 1: K = 2, slot 2 empty (rank 0) and holding NaN: one pair (0,1) margin 1 -> SP1 = 0.3132617
    # loss = (0.2511505 + 0.3132617) / 2 = 0.2822061
    rewards = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, NAN]], requires_grad=True)
    ranks = torch.tensor([[1, 2, 3], [1, 2, 0]])
    loss = rm_loss.kway_ranking_loss(rewards, ranks)
    close(loss, ((2 * SP1 + SP2) / 3 + SP1) / 2)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[1, 2] == 0


def test_kway_loss_ranking_without_pairs_is_left_out_of_the_mean():
    # row 0: one pair, margin 3 -> SP3; row 1: a full tie, no pair -> excluded, so the mean is SP3, not SP3 / 2
    rewards = torch.tensor([[3.0, 0.0], [5.0, -5.0]])
    ranks = torch.tensor([[1, 2], [1, 1]])
    close(rm_loss.kway_ranking_loss(rewards, ranks), SP3)


@pytest.mark.parametrize(
    "ranks",
    [[[1, 1, 1], [2, 2, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 3, 0]]],
    ids=["all-ties", "all-empty", "one-filled-slot-each"],
)
def test_kway_loss_batch_without_pairs_is_zero_with_a_gradient(ranks):
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, NAN]], requires_grad=True)
    loss = rm_loss.kway_ranking_loss(rewards, torch.tensor(ranks))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(rewards.grad, torch.zeros_like(rewards))


def test_kway_loss_gradient_by_hand():
    # one pair, margin m = r0 - r1 = 0: loss = -log σ(m), dloss/dr0 = -(1 - σ(m)) = -0.5, dloss/dr1 = +0.5
    rewards = torch.tensor([[0.7, 0.7]], requires_grad=True)
    rm_loss.kway_ranking_loss(rewards, torch.tensor([[1, 2]])).backward()
    close(rewards.grad, [[-0.5, 0.5]])


def test_kway_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rewards and ranks"):
        rm_loss.kway_ranking_loss(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# expand_to_pairs, pairwise_loss
# ---------------------------------------------------------------------------------------------------------
