"""rlhf.rm.loss against numbers worked out by hand (the arithmetic is in the comments; constants in by_hand)."""

from __future__ import annotations

import math

import pytest
import torch
from by_hand import NAN, SP1, SP2, SP3, close

from benchmarks import kway_vs_pairs
from rlhf.rm import loss as rm_loss

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


def test_kway_loss_equals_mean_over_rankings_of_pairwise_loss_on_expanded_pairs():
    torch.manual_seed(0)
    rewards = torch.randn(6, 5)
    # variable K, ties and an all-tie row
    ranks = torch.tensor(
        [[1, 2, 3, 4, 5], [3, 1, 2, 0, 0], [1, 1, 2, 2, 3], [2, 1, 0, 0, 0], [1, 1, 1, 0, 0], [5, 4, 3, 2, 1]]
    )
    ranking_index, chosen_index, rejected_index = kway_vs_pairs.expand_to_pairs(ranks)
    per_ranking = []
    for b in range(len(ranks)):
        rows = ranking_index == b
        if rows.any():
            per_ranking.append(
                kway_vs_pairs.pairwise_loss(rewards[b, chosen_index[rows]], rewards[b, rejected_index[rows]])
            )
    expected = torch.stack(per_ranking).mean()
    close(rm_loss.kway_ranking_loss(rewards, ranks), expected.item())


def test_kway_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="rewards and ranks"):
        rm_loss.kway_ranking_loss(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# expand_to_pairs, pairwise_loss
# ---------------------------------------------------------------------------------------------------------


def test_expand_to_pairs_by_hand():
    # row 0: ranks 2, 1, 3 -> order slot 1 > slot 0 > slot 2: pairs (0,2), (1,0), (1,2), sorted by chosen slot
    # row 1: slots 0 and 1 tied, slot 2 empty -> no pair
    # row 2: ranks 0, 2, 1 -> (2, 1)
    ranks = torch.tensor([[2, 1, 3], [1, 1, 0], [0, 2, 1]])
    ranking_index, chosen_index, rejected_index = kway_vs_pairs.expand_to_pairs(ranks)
    assert ranking_index.tolist() == [0, 0, 0, 2]
    assert chosen_index.tolist() == [0, 1, 1, 2]
    assert rejected_index.tolist() == [2, 0, 2, 1]


def test_expand_to_pairs_gives_k_choose_2_pairs_for_a_strict_ranking():
    for k in (2, 4, 6, 9):
        ranks = torch.arange(1, k + 1).flip(0).unsqueeze(0)
        assert len(kway_vs_pairs.expand_to_pairs(ranks)[0]) == math.comb(k, 2)


def test_pairwise_loss_by_hand_and_empty():
    # margins 1 and 0: (SP1 + LN2) / 2 = 0.5032044
    close(kway_vs_pairs.pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])), 0.5032044)
    chosen = torch.zeros(0, requires_grad=True)
    loss = kway_vs_pairs.pairwise_loss(chosen, torch.zeros(0))
    assert loss.item() == 0.0
    loss.backward()
    assert chosen.grad.shape == (0,)
