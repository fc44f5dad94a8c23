"""PPO's reward shaping and advantages, as pure functions of tensors (torchtune keeps the same in rlhf/rewards.py).

    response masks     which sampled tokens a response really holds (up to and including its first EOS)
    reward shaping     the missing-EOS penalty, the per-token KL penalty, the score at the last token
    advantages         GAE, whitening over the masked tokens, and the running moments that normalise scores

Imports torch only. Shapes: B rollouts, T response tokens. Masks are 0/1 tensors of any dtype (bool, long or
float); a position with mask 0 never affects a result, even when it holds NaN or garbage (padded critic outputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlhf.distributed import sum_over_ranks
from rlhf.ppo.options import KL_ESTIMATORS

# ---------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """mean over mask = Σ m·x / Σ m, over `dim` (all dims when None). An empty mask gives 0, not NaN."""
    mask = mask.bool()
    total = torch.where(mask, x, torch.zeros_like(x))
    count = mask.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum().clamp(min=1)
    return total.sum(dim=dim) / count.sum(dim=dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked entries: Σ m·(x - μ)² / (n - 1) when unbiased, else / n, with n = Σ m.

    Fewer than two entries give 0 (no NaN and no host sync to check for it), so whitening such a batch
    gives zeros instead of blowing up.
    """
    mean = masked_mean(x, mask)
    biased = masked_mean((x - mean) ** 2, mask)
    if not unbiased:
        return biased
    count = mask.bool().sum().to(x.dtype)
    return biased * count / (count - 1).clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, across_ranks: bool = False
) -> torch.Tensor:
    """Whitening over the masked entries: (x - μ) / sqrt(σ² + eps), plus μ back when `shift_mean` is False.

    μ and σ² (unbiased) are taken over the masked entries only; masked-out positions are set to 0 in the
    output, so padding carries no value into later sums. shift_mean=False keeps the mean (as rewards are
    whitened in some PPO setups, so that their sign survives).

    across_ranks: μ and σ² of the masked entries of every rank together (Σ m·x, Σ m and Σ m·(x - μ)²
    summed over ranks), as if one process held the whole batch: per-rank whitening of one or two sequences
    would remove most of their sequence-level signal.
    """
    mean, var = _masked_moments(x, mask, across_ranks)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def _masked_moments(x: torch.Tensor, mask: torch.Tensor, across_ranks: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) of the masked entries, of this rank or of all ranks; fewer than 2 give var 0."""
    if not across_ranks:
        return masked_mean(x, mask), masked_var(x, mask, unbiased=True)

    mask = mask.bool()
    zeros = torch.zeros_like(x)
    total, count = sum_over_ranks(torch.stack([torch.where(mask, x, zeros).sum(), mask.to(x.dtype).sum()]))
    mean = total / count.clamp(min=1)
    squares = sum_over_ranks(torch.where(mask, (x - mean) ** 2, zeros).sum())
    return mean, squares / (count - 1).clamp(min=1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much of the returns' variance the critic explains: 1 - Var[R - V] / Var[R], over masked entries.

    1 is a perfect critic, 0 no better than a constant, negative worse. Var[R] = 0 gives NaN (undefined,
    as in Stable-Baselines3).
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    ratio = var_residual / var_returns
    return torch.where(var_returns > 0, 1 - ratio, torch.full_like(ratio, math.nan)).detach()


# ---------------------------------------------------------------------------------------------------------
# Response masks and reward shaping
# ---------------------------------------------------------------------------------------------------------


def is_stop_token(response_ids: torch.Tensor, stop_token_ids: int | Sequence[int]) -> torch.Tensor:
    """Bool mask of the tokens that end a response: one EOS id, or any of a checkpoint's several."""
    stops = torch.as_tensor(
        [stop_token_ids] if isinstance(stop_token_ids, int) else list(stop_token_ids),
        device=response_ids.device,
        dtype=response_ids.dtype,
    )
    return torch.isin(response_ids, stops)


def response_mask_after_eos(
    response_ids: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int
) -> torch.Tensor:
    """(B, T) long mask of the tokens a response really holds: 1 up to and including its first EOS (any of the
    stop ids), 0 after it and on padding. A response without EOS keeps every non-pad token (it hit max_new_tokens).

    Works when pad_token_id == eos_token_id (GPT-2 style): the first EOS is kept, the rest is padding.
    """
    is_eos = is_stop_token(response_ids, eos_token_id)
    eos_strictly_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    real_token = (response_ids != pad_token_id) | is_eos
    return ((eos_strictly_before == 0) & real_token).long()


def score_with_eos_penalty(
    scores: torch.Tensor, response_ids: torch.Tensor, eos_token_id: int | Sequence[int], missing_eos_penalty: float
) -> torch.Tensor:
    """score - penalty for each response holding no EOS (truncated at max_new_tokens), else unchanged.

    Without it the policy can learn to ramble past the length limit where the reward model never sees an
    ending (the "missing EOS" penalty of TRL's PPO; torchtune sets such scores to a constant instead).
    """
    has_eos = is_stop_token(response_ids, eos_token_id).any(dim=-1)
    return scores - missing_eos_penalty * (~has_eos).to(scores.dtype)


def _last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last nonzero entry in each row of a (B, T) mask; -1 for an empty row."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=-1).values


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kl_estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from samples of π, with log r = log π_ref - log π:

    k1 = -log r = log π - log π_ref           (unbiased, can be negative)
    k2 = ½ (log r)²                            (biased, >= 0)
    k3 = (r - 1) - log r                       (unbiased, >= 0; Schulman, "Approximating KL divergence")
    abs = |log π - log π_ref|
    """
    log_ratio = ref_logprobs - logprobs
    if kl_estimator == "k1":
        return -log_ratio
    if kl_estimator == "k2":
        return 0.5 * log_ratio**2
    if kl_estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    if kl_estimator == "abs":
        return log_ratio.abs()
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}; got {kl_estimator!r}")


def kl_penalized_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards with the KL penalty (Ziegler et al. 2019 eq. 2; InstructGPT eq. 2):

        reward_t = -kl_coef · kl_t  +  [t = last response token] · score,    kl_t = kl_penalty(t)

    Args:
        score: (B,) reward-model score of each full response.
        logprobs, ref_logprobs: (B, T) log-probabilities of the sampled tokens under the policy and the
            frozen reference (SFT) model.
        response_mask: (B, T), 1 on real response tokens (see `response_mask_after_eos`).
        kl_coef: β, the KL coefficient (a `kl_control` controller's `.value`).
        kl_estimator: one of KL_ESTIMATORS (see `kl_penalty`).

    Returns:
        (rewards, kl), both (B, T) and 0 outside the mask. A response with no real token gets no score.
    """
    mask = response_mask.bool()
    kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    rewards = -kl_coef * kl
    positions = torch.arange(mask.shape[-1], device=mask.device)
    # An empty row has last index -1, which matches no position, so its score goes nowhere.
    is_last_token = positions[None, :] == _last_true_index(mask)[:, None]
    rewards = rewards + is_last_token.to(rewards.dtype) * score[:, None].to(rewards.dtype)
    return rewards, kl


# ---------------------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------------------


def gae_advantages(
    values: torch.Tensor, rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right to left over the response:

        δ_t = r_t + γ · V_{t+1} - V_t
        A_t = δ_t + γ λ · A_{t+1}
        R_t = A_t + V_t                    (the critic's regression target)

    with V_{t+1} = A_{t+1} = 0 past the last real token, so the episode ends at EOS. Masked positions
    (padding) count as past the end whatever `values` and `rewards` hold there, and get A = R = 0.

    Args:
        values: (B, T) critic values V(s_t) recorded at rollout time.
        rewards: (B, T) per-token rewards (see `kl_penalized_rewards`).
        response_mask: (B, T), 1 on real response tokens, a prefix of each row (right padding).
        gamma, lam: discount γ and GAE λ (InstructGPT-style RLHF commonly uses γ = 1, λ = 0.95).

    Returns:
        (advantages, returns), both (B, T).
    """
    mask = response_mask.bool()
    values = torch.where(mask, values, torch.zeros_like(values))
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        # A padded step resets the recursion, so nothing it holds reaches the real tokens before it.
        advantage = torch.where(mask[:, t], advantage, torch.zeros_like(advantage))
        advantages[:, t] = advantage
        next_value, next_advantage = values[:, t], advantage
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


# ---------------------------------------------------------------------------------------------------------
# Score normalisation
# ---------------------------------------------------------------------------------------------------------


class RunningMoments:
    """Running mean and standard deviation of all scores seen so far (Chan et al.'s parallel update).

    Used to normalise reward-model scores during PPO; its state goes into the checkpoint so that a resumed
    run normalises exactly as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0  # unbiased variance of everything seen; 1 before any update, so normalise is a no-op
        self.count = 0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: torch.Tensor, across_ranks: bool = False) -> tuple[float, float]:
        """Fold a batch of scores in; return the running (mean, std) after the update.

            δ = μ_batch - μ,  n' = n + m,  μ' = μ + δ m / n',
            M2' = M2 + M2_batch + δ² n m / n',  var' = M2' / (n' - 1)

        across_ranks: the batch is every rank's scores together (m, Σx and Σ(x - μ_batch)² summed over ranks),
        so all ranks hold the same moments, those one process would hold with the whole global batch, and a
        checkpoint's moments are right for every rank on resume.
        """
        x = x.detach().double().flatten()
        if across_ranks:
            batch_count, batch_sum = sum_over_ranks(
                torch.stack([torch.tensor(float(x.numel()), dtype=x.dtype), x.sum()])
            ).tolist()
            batch_count = int(round(batch_count))
            batch_mean = batch_sum / batch_count if batch_count else 0.0
            batch_m2 = sum_over_ranks(((x - batch_mean) ** 2).sum()).item()
        else:
            batch_count = x.numel()
            batch_mean = x.mean().item() if batch_count else 0.0
            batch_m2 = ((x - batch_mean) ** 2).sum().item()
        if batch_count == 0:
            return self.mean, self.std
        old_m2 = self.var * (self.count - 1) if self.count > 1 else 0.0
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.mean += delta * batch_count / total
        m2 = old_m2 + batch_m2 + delta**2 * self.count * batch_count / total
        self.var = m2 / (total - 1) if total > 1 else 1.0
        self.count = total
        return self.mean, self.std

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """(x - running mean) / (running std + eps)."""
        return (x - self.mean) / (self.std + eps)

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
