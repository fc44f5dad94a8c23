"""The mismatch between the engine that sampled a rollout and the actor that trains on it, as pure functions.

With `rollout_engine: vllm` the responses come from vLLM's kernels while log π_old is the actor's own recomputation
(as in OpenRLHF and verl): the two differ in the last bits even with the same weights (other kernels, other
summation orders, bf16), and by far more when a weight sync goes wrong, the known silent failure of this design.
`logprob_gap` measures it every step; `truncated_is_weights` optionally corrects for it in the policy loss.
Imports torch only. Shapes: B responses, T response tokens.
"""

from __future__ import annotations

import torch

from rlhf.ppo.rewards import masked_mean


def logprob_gap(
    engine_logprobs: torch.Tensor, logprobs: torch.Tensor, response_mask: torch.Tensor
) -> tuple[float, float]:
    """(mean |Δ|, KL) between the engine's and the actor's log-probabilities of the sampled tokens, over the
    masked tokens, with Δ_t = log π_engine(a_t) − log π_actor(a_t):

        gap = mean_t |Δ_t|
        KL(π_engine ‖ π_actor) ≈ mean_t (exp(−Δ_t) − 1 + Δ_t)      (k3 on the engine's samples: ≥ 0, unbiased)

    Both are 0 when the engine samples exactly the actor's distribution; 0 and 0 for no tokens.
    """
    mask = response_mask.bool()
    if not mask.any():
        return 0.0, 0.0
    delta = engine_logprobs.float() - logprobs.float()
    gap = masked_mean(delta.abs(), response_mask)
    kl = masked_mean(torch.expm1(-delta) + delta, response_mask)
    return gap.item(), kl.item()


def truncated_is_weights(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; verl's and OpenRLHF's vLLM correction): the policy loss is taken on the engine's
    samples, so each token is reweighted by the ratio of the actor's old probability to the engine's, truncated:

        w_t = min(π_old(a_t) / π_engine(a_t), C) = min(exp(log π_old − log π_engine), C)

    Detached: a weight on the loss, not part of its gradient."""
    return torch.exp(logprobs.float() - engine_logprobs.float()).clamp(max=cap).detach()
