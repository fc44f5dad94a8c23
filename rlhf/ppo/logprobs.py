"""Log-probabilities of PPO: the full softmax of logits / temperature, whatever top-k and top-p sample from.

Temperature is part of the policy: sampling at T = 0.7 and scoring softmax(logits) would bias the KL estimate
and can make it negative, so every log π (old, new, reference) is taken at the sampling temperature. Top-k and
top-p are not: their support is recomputed at every forward, and the KV-cached sampler and a full forward differ
in the last bits, so a token at the edge of the nucleus can be inside it when sampled and outside it when scored.
It would get log π = -inf (floored), and its ratio exp(log π_new - log π_old) would be 0 or infinite. On the
full tempered softmax every sampled token has a finite log-probability under every model, as in TRL and
OpenRLHF. The price is that with top-k/top-p the samples come from a truncated π while the ratio and the KL are
those of the untruncated one; with both off (the default) they are exactly the sampler's.
Suppressed tokens (padding that is not EOS) are never sampled and are kept out of the softmax.
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
    # Every token that ends a response (the tokenizer's EOS and the checkpoint's EOS list, e.g. Llama 3's
    # <|eot_id|>); empty: the tokenizer's EOS alone.
    stop_token_ids: tuple[int, ...] = ()

    def stops(self, tokenizer) -> tuple[int, ...]:
        return self.stop_token_ids or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())

    def generation_config(self, tokenizer):
        """A complete GenerationConfig: nothing from a model's own generation_config.json sneaks in
        (a shipped repetition_penalty would change the distribution behind our back)."""
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=True,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=list(self.stops(tokenizer)) or None,
            bos_token_id=tokenizer.bos_token_id,
            suppress_tokens=list(self.suppressed_token_ids) or None,
        )


def tempered_scores(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """float32 logits (..., V) / temperature, with suppressed tokens at -inf."""
    scores = logits.float() / settings.temperature
    if settings.suppressed_token_ids:
        suppressed = torch.tensor(settings.suppressed_token_ids, device=scores.device)
        scores = scores.index_fill(-1, suppressed, float("-inf"))
    return scores


def sampling_settings_for(
    tokenizer, temperature: float, top_k: int, top_p: float, max_new_tokens: int, stop_token_ids: tuple[int, ...] = ()
) -> SamplingSettings:
    """Settings with the tokenizer's padding token suppressed (unless it ends responses, as GPT-2's EOS does)."""
    stops = stop_token_ids or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    pad = tokenizer.pad_token_id
    suppressed = (pad,) if pad is not None and pad not in stops else ()
    return SamplingSettings(temperature, top_k, top_p, max_new_tokens, suppressed, tuple(stops))


def sampling_logprobs(logits: torch.Tensor, labels: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """float32 log π(labels) (B, T) on the tempered softmax of logits (B, T, V)."""
    logprobs = torch.log_softmax(tempered_scores(logits, settings), dim=-1)
    logprobs = logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # Padding after EOS is suppressed, so -inf: a masked -inf would still turn gradients into NaN through
    # exp(-inf - -inf), so it gets a finite floor.
    return logprobs.clamp(min=LOGPROB_FLOOR)


def sampling_entropy(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Per-token entropy (B, T) of the tempered softmax; suppressed tokens contribute 0 (not 0 · -inf)."""
    scores = tempered_scores(logits, settings)
    log_p = torch.log_softmax(scores, dim=-1)
    p_log_p = torch.where(torch.isfinite(scores), log_p.exp() * log_p, torch.zeros_like(log_p))
    return -p_log_p.sum(dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, as `generate` gives a left-padded batch: 0 at each row's
    first real token. A forward pass without them would see other positions than generation did."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
