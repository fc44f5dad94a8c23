"""The reward model's loss on K-way rankings (InstructGPT §3.5).

Pure functions of tensors; imports torch only. Shapes: B rankings, K responses per ranking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_pair_mask(ranks: torch.Tensor) -> torch.Tensor:
    """(B, K, K) bool: True at [b, i, j] when response i is ranked strictly better than j (1 = best, 0 = empty)."""
    filled = ranks > 0
    both_filled = filled[:, :, None] & filled[:, None, :]
    return both_filled & (ranks[:, :, None] < ranks[:, None, :])


def _check_rankings(rewards: torch.Tensor, ranks: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape != ranks.shape:
        raise ValueError(f"rewards and ranks must both be (B, K); got {tuple(rewards.shape)} and {tuple(ranks.shape)}")


def kway_ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Reward-model loss on K-way rankings (InstructGPT, Ouyang et al. 2022, eq. 1).

        loss(θ) = -1/|R| Σ_{rankings b ∈ R} 1/|P_b| Σ_{(i, j) ∈ P_b} log σ(r_θ(x_b, y_i) - r_θ(x_b, y_j))

    where P_b holds the ordered pairs with 0 < ranks[b, i] < ranks[b, j] (i preferred), and R holds the
    rankings with at least one pair. Each response is scored once (K forward passes per ranking), and all
    C(K, 2) comparisons of a prompt form a single batch element, which InstructGPT found avoids the
    overfitting of shuffling the pairs into separate elements.

    Args:
        rewards: float (B, K), the reward model's score of each response.
        ranks: int (B, K), 1 = best; equal ranks are ties and form no pair; 0 marks an empty slot, so a batch
            may hold rankings of different K.

    Returns:
        A scalar. A batch without any pair (all ties, all empty) gives 0, still connected to `rewards` so
        that `backward()` works and gives zero gradients.
    """
    _check_rankings(rewards, ranks)
    # Empty slots may hold anything (NaN from a dummy forward pass); zero them so no NaN reaches the sum.
    rewards = torch.where(ranks > 0, rewards, torch.zeros_like(rewards))
    margin = rewards[:, :, None] - rewards[:, None, :]  # margin[b, i, j] = r_i - r_j
    pair_mask = ranking_pair_mask(ranks)
    pair_losses = torch.where(pair_mask, -F.logsigmoid(margin), torch.zeros_like(margin))
    pairs_per_ranking = pair_mask.sum(dim=(1, 2))
    loss_per_ranking = pair_losses.sum(dim=(1, 2)) / pairs_per_ranking.clamp(min=1)
    has_pairs = pairs_per_ranking > 0
    return (loss_per_ranking * has_pairs).sum() / has_pairs.sum().clamp(min=1)
