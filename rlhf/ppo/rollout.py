"""Typed containers for PPO: one `Rollout` value per batch of experience, one `PPOStats` per update step.

Imports torch only. Shapes: B rollouts, Q query (prompt) tokens, T response tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import torch

from rlhf.ppo.groups import shuffled_rows_by_group


@dataclasses.dataclass
class Rollout:
    """A batch of PPO experience, row b being one prompt and the response the policy sampled for it. With several
    samples per prompt, a prompt's responses are consecutive rows (`groups`).

    The first fields come from generation and scoring; `rewards`, `advantages` and `returns` are filled in
    afterwards (`dataclasses.replace(rollout, rewards=..., ...)`) and stay None until then.
    """

    query_ids: torch.Tensor  # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, Q) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) sampled tokens, right-padded
    response_mask: torch.Tensor  # (B, T) 1 up to and including the first EOS (rewards.response_mask_after_eos)
    logprobs: torch.Tensor  # (B, T) log π_old(token) under the policy that sampled it
    ref_logprobs: torch.Tensor  # (B, T) log π_ref(token) under the frozen SFT model
    values: torch.Tensor | None  # (B, T) critic's V(s_t) at sampling time; None without a critic
    scores: torch.Tensor  # (B,) reward-model score of each full response (an ensemble's: aggregated)
    rewards: torch.Tensor | None = None  # (B, T) per-token rewards with the KL penalty
    advantages: torch.Tensor | None = None  # (B, T) GAE's or a critic-free estimator's (rlhf.ppo.estimators)
    returns: torch.Tensor | None = None  # (B, T) critic targets, advantages + values; None without a critic
    member_scores: torch.Tensor | None = None  # (B, k) each ensemble member's score; None for one reward model
    # (B, T) log-probabilities of the sampled tokens under the engine that sampled them (rollout_engine: vllm);
    # None when the actor sampled them itself (hf). Only for the mismatch metrics and truncated IS (mismatch.py).
    engine_logprobs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        batch_size = self.query_ids.shape[0]
        for field in dataclasses.fields(self):
            tensor = getattr(self, field.name)
            if tensor is not None and tensor.shape[0] != batch_size:
                raise ValueError(f"Rollout.{field.name} has {tensor.shape[0]} rows; query_ids has {batch_size}")

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    def _map(self, fn) -> Rollout:
        """A new Rollout with `fn` applied to every tensor field (None stays None)."""
        changes = {
            f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> Rollout:
        """The same rollout with every tensor on `device`."""
        return self._map(lambda tensor: tensor.to(device))

    def select(self, rows: torch.Tensor) -> Rollout:
        """The rollout restricted to `rows` (a long index or bool mask over B)."""
        return self._map(lambda tensor: tensor[rows.to(tensor.device)])

    def minibatches(
        self, size: int, generator: torch.Generator | None = None, samples_per_prompt: int = 1
    ) -> Iterator[Rollout]:
        """Shuffle whole groups of `samples_per_prompt` rows (with `generator`, for reproducible epochs) and yield
        Rollouts of `size` rows, a multiple of the group; the last one holds the remainder. Every row appears
        exactly once per call, and a group's rows in one minibatch, in their order."""
        if size < 1 or size % samples_per_prompt:
            raise ValueError(f"minibatch size must be a positive multiple of {samples_per_prompt}; got {size}")
        order = shuffled_rows_by_group(len(self), samples_per_prompt, generator)
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size])


class PPOStats(NamedTuple):
    """What one PPO update step reports; tensors are detached scalars (means over the minibatch's tokens)."""

    loss: torch.Tensor  # total loss that was back-propagated
    policy_loss: torch.Tensor  # clipped surrogate (losses.ppo_policy_loss)
    value_loss: torch.Tensor | None  # clipped value loss (losses.ppo_value_loss); None without a critic
    ptx_loss: torch.Tensor  # PPO-ptx language-modelling loss; 0 when ptx is off
    clip_fraction: torch.Tensor  # share of tokens where the policy ratio was clipped
    value_clip_fraction: torch.Tensor | None  # share of tokens where the value was clipped; None without a critic
    approx_kl: torch.Tensor  # k3 estimate of KL(π_old || π)
    entropy: torch.Tensor  # mean per-token entropy of π
    ratio: torch.Tensor  # mean π / π_old
    kl_loss: torch.Tensor | None = None  # the KL loss term (losses.kl_loss) before β; None unless kl_in_loss
