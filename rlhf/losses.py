"""Every loss and advantage function of the pipeline, as pure functions of tensors.

Imports torch only, so tests and data tools import it without deepspeed, peft or transformers.

Shapes: B = batch (rankings or rollouts), K = responses per ranking, T = response tokens, V = vocabulary.
Masks are 0/1 tensors of any dtype (bool, long or float); a position with mask 0 never affects a result,
even when it holds NaN or garbage (padded critic outputs, logits of pad tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


# ---------------------------------------------------------------------------------------------------------
# Reward model: k-way rankings (InstructGPT §3.5)
# ---------------------------------------------------------------------------------------------------------


def _ranking_pair_mask(ranks: torch.Tensor) -> torch.Tensor:
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
    pair_mask = _ranking_pair_mask(ranks)
    pair_losses = torch.where(pair_mask, -F.logsigmoid(margin), torch.zeros_like(margin))
    pairs_per_ranking = pair_mask.sum(dim=(1, 2))
    loss_per_ranking = pair_losses.sum(dim=(1, 2)) / pairs_per_ranking.clamp(min=1)
    has_pairs = pairs_per_ranking > 0
    return (loss_per_ranking * has_pairs).sum() / has_pairs.sum().clamp(min=1)


def ranking_pair_accuracy(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs the reward model orders as the labellers did: Σ_{(i,j) ∈ P} [r_i > r_j] + ½ [r_i = r_j].

    Returns (correct_pairs, total_pairs) as 0-dim float tensors (sums, so they all-reduce across ranks and
    accumulate across batches; accuracy = correct / total). A tie in reward counts as half a correct pair,
    so a constant reward model scores 0.5, not 0 or 1. Tied or empty ranks form no pair.
    """
    _check_rankings(rewards, ranks)
    pair_mask = _ranking_pair_mask(ranks)
    margin = rewards[:, :, None] - rewards[:, None, :]
    credit = (margin > 0).float() + 0.5 * (margin == 0).float()
    correct = torch.where(pair_mask, credit, torch.zeros_like(credit)).sum()
    return correct.detach(), pair_mask.sum().float()


def expand_to_pairs(ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C(K, 2) expansion other frameworks train on: one (chosen, rejected) row per ordered pair.

    Returns (ranking_index, chosen_index, rejected_index), three long tensors of length P (number of pairs),
    sorted by ranking, then chosen slot, then rejected slot. `responses[ranking_index, chosen_index]` is
    preferred to `responses[ranking_index, rejected_index]`. Ties and empty slots give no row.
    """
    if ranks.dim() != 2:
        raise ValueError(f"ranks must be (B, K); got {tuple(ranks.shape)}")
    ranking_index, chosen_index, rejected_index = _ranking_pair_mask(ranks).nonzero(as_tuple=True)
    return ranking_index, chosen_index, rejected_index


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss on (chosen, rejected) pairs: mean_p -log σ(r_chosen,p - r_rejected,p).

    No pairs gives 0 with a gradient path, as `kway_ranking_loss` does.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"chosen and rejected rewards differ in shape: "
                         f"{tuple(chosen_rewards.shape)} vs {tuple(rejected_rewards.shape)}")
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.sum() / max(losses.numel(), 1)


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


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whitening over the masked entries: (x - μ) / sqrt(σ² + eps), plus μ back when `shift_mean` is False.

    μ and σ² (unbiased) are taken over the masked entries only; masked-out positions are set to 0 in the
    output, so padding carries no value into later sums. shift_mean=False keeps the mean (as rewards are
    whitened in some PPO setups, so that their sign survives).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


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
# Token log-probabilities, masks and rewards of a rollout
# ---------------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(y_t) = z_t[y_t] - log Σ_v exp z_t[v], for logits (..., V) and labels (...) of token ids.

    No shifting here: pass logits[:, :-1] with labels[:, 1:] for a causal LM. Avoids materialising the full
    (B, T, V) log-softmax: in float32/64 it gathers the label logit and subtracts a logsumexp; in half
    precision (where logsumexp loses digits) it goes row by row in float32, so only one row's float32 copy
    exists at a time. The result is float32 for half inputs.
    """
    if logits.dtype in (torch.float32, torch.float64):
        label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return label_logits - torch.logsumexp(logits, dim=-1)
    rows = [
        torch.log_softmax(row_logits.float(), dim=-1).gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        for row_logits, row_labels in zip(logits, labels)
    ]
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(π_t) = -Σ_v p_v log p_v = logsumexp(z) - Σ_v p_v z_v, over the last dim; computed in float32."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def response_mask_after_eos(response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """(B, T) long mask of the tokens a response really holds: 1 up to and including its first EOS,
    0 after it and on padding. A response without EOS keeps every non-pad token (it hit max_new_tokens).

    Works when pad_token_id == eos_token_id (GPT-2 style): the first EOS is kept, the rest is padding.
    """
    is_eos = response_ids == eos_token_id
    eos_strictly_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    real_token = (response_ids != pad_token_id) | is_eos
    return ((eos_strictly_before == 0) & real_token).long()


def score_with_eos_penalty(scores: torch.Tensor, response_ids: torch.Tensor, eos_token_id: int,
                           missing_eos_penalty: float) -> torch.Tensor:
    """score - penalty for each response holding no EOS (truncated at max_new_tokens), else unchanged.

    Without it the policy can learn to ramble past the length limit where the reward model never sees an
    ending (the "missing EOS" penalty of TRL's PPO; torchtune sets such scores to a constant instead).
    """
    has_eos = (response_ids == eos_token_id).any(dim=-1)
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


def kl_penalized_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         response_mask: torch.Tensor, kl_coef: float,
                         kl_estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
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
# Advantages and PPO losses
# ---------------------------------------------------------------------------------------------------------


def gae_advantages(values: torch.Tensor, rewards: torch.Tensor, response_mask: torch.Tensor,
                   gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
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


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    response_mask: torch.Tensor, clip_eps: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        ρ_t = exp(log π(a_t) - log π_old(a_t))
        loss = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))        (mean over all masked tokens)

    Returns:
        (loss, clip_fraction, approx_kl): clip_fraction is the share of tokens where the clipped term is the
        larger (so its gradient is zero); approx_kl is the k3 estimate of KL(π_old || π),
        mean_t (ρ_t - 1) - log ρ_t, on samples from π_old. Both statistics are detached.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), response_mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), response_mask)
    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, response_mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   response_mask: torch.Tensor, clip_eps_value: float) -> tuple[torch.Tensor, torch.Tensor]:
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

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Fold a batch of scores in; return the running (mean, std) after the update.

            δ = μ_batch - μ,  n' = n + m,  μ' = μ + δ m / n',
            M2' = M2 + M2_batch + δ² n m / n',  var' = M2' / (n' - 1)
        """
        x = x.detach().double().flatten()
        batch_count = x.numel()
        if batch_count == 0:
            return self.mean, self.std
        batch_mean = x.mean().item()
        batch_m2 = ((x - batch_mean) ** 2).sum().item()
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
