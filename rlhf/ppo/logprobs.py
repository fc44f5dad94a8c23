"""Log-probabilities under exactly the distribution the policy sampled from.

Generation with temperature T, top-k and top-p samples from a warped distribution, not from softmax(logits).
The PPO ratio and the KL penalty must be computed under that same distribution: log π from raw logits while
sampling at T = 0.7 biases the KL estimate and can make it negative (a known complaint against several RLHF
libraries). Here the warping is done by the very `transformers` warpers that `generate` uses, in its order
(temperature, then top-k, then top-p), so the numbers are those of the sampler.

The reference policy is warped with the same temperature and restricted to the tokens the policy could have
sampled (the policy's top-k/top-p support): a token the policy drew always has finite log π_ref, so the
per-token KL is finite, and KL(π || π_ref) is that of two distributions on the same support.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


LOGPROB_FLOOR = -1e4


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled; recorded in the run's config and used for every log-probability."""

    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    max_new_tokens: int = 32
    # Never sampled: the padding token when it is not EOS. A sampled pad would be masked out of the forward
    # passes that score the response, so generation and scoring would see different sequences.
    suppressed_token_ids: tuple[int, ...] = ()

    def generation_config(self, tokenizer):
        """A complete GenerationConfig: nothing from a model's own generation_config.json sneaks in
        (a shipped repetition_penalty would change the distribution behind our back)."""
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
            max_new_tokens=self.max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
            suppress_tokens=list(self.suppressed_token_ids) or None,
        )


def warp_logits(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """The sampler's scores for logits (..., V): suppressed tokens, logits / T, top-k, top-p; filtered ones -inf."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    shape = logits.shape
    scores = logits.float().reshape(-1, shape[-1])
    if settings.suppressed_token_ids:
        scores = scores.index_fill(-1, torch.tensor(settings.suppressed_token_ids, device=scores.device),
                                   float("-inf"))
    if settings.temperature != 1.0:
        scores = TemperatureLogitsWarper(settings.temperature)(None, scores)
    if settings.top_k:
        scores = TopKLogitsWarper(settings.top_k)(None, scores)
    if settings.top_p < 1.0:
        scores = TopPLogitsWarper(settings.top_p)(None, scores)
    return scores.reshape(shape)


def sampling_settings_for(tokenizer, temperature: float, top_k: int, top_p: float,
                          max_new_tokens: int) -> SamplingSettings:
    """Settings with the tokenizer's padding token suppressed (unless it doubles as EOS)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    suppressed = (pad,) if pad is not None and pad != eos else ()
    return SamplingSettings(temperature, top_k, top_p, max_new_tokens, suppressed)


def sampling_logprobs(logits: torch.Tensor, labels: torch.Tensor, settings: SamplingSettings,
                      support: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π_warped(labels), kept) for logits (B, T, V) and labels (B, T).

    `support` (B, T, V) bool, when given, replaces the logits' own top-k/top-p support: the reference policy
    is evaluated on the policy's support (see the module docstring). Returns the float32 log-probabilities and
    the support that was used, so the reference can be restricted to the policy's.
    """
    if support is None:
        scores = warp_logits(logits, settings)
        support = torch.isfinite(scores)
    else:
        scores = (logits.float() / settings.temperature).masked_fill(~support, float("-inf"))
    logprobs = torch.log_softmax(scores, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # Padding after EOS (suppressed, so -inf) and tokens the updated policy would no longer sample get a finite
    # floor: a masked -inf would still turn gradients into NaN through exp(-inf - -inf).
    return logprobs.clamp(min=LOGPROB_FLOOR), support


def sampling_entropy(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Per-token entropy (B, T) of the warped distribution; filtered tokens contribute 0 (not 0 · -inf)."""
    scores = warp_logits(logits, settings)
    log_p = torch.log_softmax(scores, dim=-1)
    p_log_p = torch.where(torch.isfinite(scores), log_p.exp() * log_p, torch.zeros_like(log_p))
    return -p_log_p.sum(dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, as `generate` gives a left-padded batch: 0 at each row's
    first real token. A forward pass without them would see other positions than generation did."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
