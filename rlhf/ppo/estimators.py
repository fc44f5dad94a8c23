"""Critic-free advantage estimators, as pure functions of tensors: RLOO, GRPO (and Dr.GRPO), REINFORCE++.

GAE, which needs a critic, lives in `rewards.py`. The estimators here replace V(s_t) by what the other responses
to the same prompt scored (a group, see `groups`) or by the batch's statistics, so PPO runs without a critic.

Imports torch only. Shapes: B rollouts (B = G groups x n samples per prompt, a group's rows consecutive), T
response tokens. Masks are 0/1 of any dtype; a masked-out position never affects a result and gets advantage 0.

What a "sequence reward" is, when the KL penalty is in the reward: the sum of the response's per-token rewards,

    R_i = Σ_t r_{i,t} = score_i - β Σ_t KL_{i,t}          (`sequence_rewards` of `rewards.kl_penalized_rewards`)

the whole response as one action (Ahmadian et al. 2024 §3; TRL's RLOO and OpenRLHF do the same). With the KL as a
loss term instead (`kl_in_loss`), β = 0 here and R_i is the score.
"""

from __future__ import annotations

import torch

from rlhf.ppo.groups import grouped
from rlhf.ppo.rewards import masked_whiten


def sequence_rewards(rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """R_i = Σ_t m_{i,t} r_{i,t}: (B,) the whole response's reward from its (B, T) per-token rewards."""
    return torch.where(response_mask.bool(), rewards, torch.zeros_like(rewards)).sum(dim=-1)


def on_every_token(per_sequence: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, T): each response's value on each of its real tokens, 0 on padding."""
    mask = response_mask.bool()
    values = per_sequence.float()[:, None].expand(mask.shape)
    return torch.where(mask, values, torch.zeros_like(values))


def rloo_advantages(
    sequence_reward: torch.Tensor, response_mask: torch.Tensor, samples_per_prompt: int
) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline (Ahmadian et al. 2024, eq. 6; Kool et al. 2019):

        A_i = R_i - 1/(n-1) Σ_{j≠i} R_j          (j over the other responses to the same prompt)
            = n/(n-1) · (R_i - mean_group(R))

    the same A_i on every token of response i. The baseline leaves response i out, so it is independent of i's
    own sample and the estimate stays unbiased. No normalisation follows, as in the paper.

    Args:
        sequence_reward: (B,) R_i (see `sequence_rewards`), groups of n consecutive rows.
        response_mask: (B, T), 1 on real response tokens.
        samples_per_prompt: n >= 2.

    Returns:
        (B, T) advantages, 0 on padding.
    """
    if samples_per_prompt < 2:
        raise ValueError(f"RLOO needs at least 2 responses per prompt, got {samples_per_prompt}")
    group = grouped(sequence_reward.float(), samples_per_prompt)
    others_mean = (group.sum(dim=1, keepdim=True) - group) / (samples_per_prompt - 1)
    return on_every_token((group - others_mean).reshape(-1), response_mask)


def grpo_advantages(
    sequence_reward: torch.Tensor,
    response_mask: torch.Tensor,
    samples_per_prompt: int,
    scale_rewards: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024 §4.1.2, outcome supervision):

        A_i = (R_i - mean_group(R)) / (std_group(R) + eps)       (std unbiased, over the n responses)

    the same A_i on every token of response i. scale_rewards=False is Dr.GRPO's (Liu et al. 2025 §3.1):
    A_i = R_i - mean_group(R), without the division, which favours prompts whose rewards vary little (too easy
    or too hard). A group whose rewards are all equal has nothing to compare and gets A = 0 exactly.

    Args:
        sequence_reward: (B,) R_i (see `sequence_rewards`), groups of n consecutive rows.
        response_mask: (B, T), 1 on real response tokens.
        samples_per_prompt: n >= 2 (the std of one response is undefined).
        scale_rewards: divide by the group's std (GRPO) or not (Dr.GRPO).
        eps: added to the std.

    Returns:
        (B, T) advantages, 0 on padding.
    """
    if samples_per_prompt < 2:
        raise ValueError(f"GRPO needs at least 2 responses per prompt, got {samples_per_prompt}")
    group = grouped(sequence_reward.float(), samples_per_prompt)
    centred = group - group.mean(dim=1, keepdim=True)
    if scale_rewards:
        centred = centred / (group.std(dim=1, keepdim=True) + eps)
    # Equal rewards can round to a mean a hair off their value; the std division would blow that up.
    all_equal = group.amax(dim=1, keepdim=True) == group.amin(dim=1, keepdim=True)
    centred = torch.where(all_equal, torch.zeros_like(centred), centred)
    return on_every_token(centred.reshape(-1), response_mask)


def minus_group_mean(scores: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """s_i - mean_group(s): (B,) scores centred within each prompt's group (REINFORCE++-baseline's baseline)."""
    group = grouped(scores.float(), samples_per_prompt)
    return (group - group.mean(dim=1, keepdim=True)).reshape(-1)


def discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """The reward-to-go of every token, right to left over the response:

        G_t = r_t + γ · G_{t+1},      G = 0 past the last real token

    Masked positions (padding) count as past the end whatever `rewards` holds there, and get G = 0.
    """
    mask = response_mask.bool()
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards)).float()
    returns = torch.zeros_like(rewards)
    following = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        following = torch.where(mask[:, t], rewards[:, t] + gamma * following, torch.zeros_like(following))
        returns[:, t] = following
    return returns


def reinforce_pp_advantages(
    rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float, across_ranks: bool = False
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, §3): token-level rewards (the per-token KL penalty in them, the score at the last
    token), their discounted returns, normalised over the whole global batch:

        G_t = Σ_{s>=t} γ^{s-t} r_s,        A_t = (G_t - mean_batch(G)) / std_batch(G)

    mean and std over every real token of the batch, of every rank when `across_ranks` (as PPO's whitening
    does); normalising over the batch instead of a group is what keeps it stable without a critic.

    For REINFORCE++-baseline, give rewards whose scores had their group's mean taken off first
    (`minus_group_mean`, then `rewards.kl_penalized_rewards`).

    Returns:
        (B, T) advantages, 0 on padding.
    """
    return masked_whiten(discounted_returns(rewards, response_mask, gamma), response_mask, across_ranks=across_ranks)
