"""The PPO losses: the clipped policy surrogate, the clipped value loss, the KL loss term and the PPO-ptx
language-modelling loss.

Pure functions of tensors, each with its formula; imports torch only. Shapes: B sequences, T response tokens,
V vocabulary. Means are over the masked (real response) tokens, unless a loss takes an `aggregation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.ppo.options import LOSS_AGGREGATIONS
from rlhf.ppo.rewards import kl_penalty, masked_mean


def aggregate(
    per_token: torch.Tensor, response_mask: torch.Tensor, aggregation: str = "token_mean", max_tokens: int | None = None
) -> torch.Tensor:
    """A (B, T) per-token loss as one number, three ways (m the mask, L = max_tokens):

        token_mean      Σ_{i,t} m·x / Σ_{i,t} m           every real token weighs the same (PPO; DAPO)
        sequence_mean   1/B Σ_i (Σ_t m·x / Σ_t m)          every response weighs the same (GRPO, eq. 3)
        dr_grpo         1/B Σ_i Σ_t m·x / L                a constant instead of each length (Dr.GRPO §3.1)

    Dividing by each response's own length (sequence_mean) weighs a token of a short response more: the
    gradient favours short correct and long wrong responses (Liu et al. 2025); dr_grpo removes that bias.
    A response with no real token counts as 0 in the sequence means.
    """
    if aggregation == "token_mean":
        return masked_mean(per_token, response_mask)
    mask = response_mask.bool()
    masked = torch.where(mask, per_token, torch.zeros_like(per_token))
    if aggregation == "sequence_mean":
        return (masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)).mean()
    if aggregation == "dr_grpo":
        if not max_tokens or max_tokens < 1:
            raise ValueError(f"dr_grpo aggregation needs max_tokens >= 1, got {max_tokens}")
        return masked.sum(dim=-1).mean() / max_tokens
    raise ValueError(f"aggregation must be one of {LOSS_AGGREGATIONS}; got {aggregation!r}")


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        ρ_t = exp(log π(a_t) - log π_old(a_t))
        loss = aggregate_t w_t · max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))

    aggregated over the masked tokens as `aggregate` says (default: the mean over all of them), with w_t = 1
    unless `token_weights` are given (truncated importance weights for samples from another engine,
    rlhf.ppo.mismatch).

    Returns:
        (loss, clip_fraction, approx_kl): clip_fraction is the share of tokens where the clipped term is the
        larger (so its gradient is zero); approx_kl is the k3 estimate of KL(π_old || π),
        mean_t (ρ_t - 1) - log ρ_t, on samples from π_old. Both statistics are detached.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights
    loss = aggregate(per_token, response_mask, aggregation, max_tokens)
    clip_fraction = masked_mean((clipped > unclipped).float(), response_mask)
    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, response_mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (PPO2 baselines, as used by Ziegler et al. 2019):

        V_clip = V_old + clip(V - V_old, -ε_v, ε_v)
        loss = ½ · mean_t max((V_t - R_t)², (V_clip,t - R_t)²)              (mean over all masked tokens)

    Returns (loss, clip_fraction), the latter the detached share of tokens where the clipped error is larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps_value, clip_eps_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), response_mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), response_mask)
    return loss, clip_fraction.detach()


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
) -> torch.Tensor:
    """GRPO's KL term (Shao et al. 2024, eq. 4), to add to the policy loss with weight β instead of a KL penalty
    in the reward: Schulman's k3 estimate of KL(π || π_ref) at each sampled token,

        D_t = π_ref(a_t)/π(a_t) - log(π_ref(a_t)/π(a_t)) - 1         (>= 0, 0 where π = π_ref)
        loss = aggregate_t D_t

    aggregated as the policy loss is (`aggregate`). Its gradient pulls log π towards log π_ref token by token:
    d D_t / d log π = 1 - π_ref/π.
    """
    return aggregate(kl_penalty(logprobs, ref_logprobs, "k3"), response_mask, aggregation, max_tokens)


def sft_ptx_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy for PPO-ptx (InstructGPT eq. 2, the γ · E_pretrain[log π(x)] term):

        loss = -1/N Σ_{t : labels[t+1] != ignore_index} log π(labels[t+1] | x_{<=t})

    `logits` (B, T, V) and `labels` (B, T) are aligned as a causal LM sees them (labels = input ids, the
    shift happens here, as in Hugging Face models). All labels ignored gives 0 with a gradient path.
    """
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shifted_logits.float(), shifted_labels, ignore_index=ignore_index, reduction="sum")
    return total / (shifted_labels != ignore_index).sum().clamp(min=1)
