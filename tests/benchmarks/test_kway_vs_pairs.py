"""The pairwise baseline of benchmarks/kway_vs_pairs.py: the C(K, 2) expansion and the Bradley-Terry loss, by hand,
and the K-way loss equal to their mean per ranking."""

from __future__ import annotations

import math

import torch

from benchmarks import kway_vs_pairs
from rlhf.rm import loss as rm_loss
from tests.helpers.by_hand import close


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
