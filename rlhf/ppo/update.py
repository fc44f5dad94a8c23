"""The PPO update: several epochs over shuffled minibatches of one rollout, actor and critic (GAE only) each a step.

A non-finite loss on any rank skips that minibatch on every rank (no backward, no step), so the weights and
optimiser states stay those of the last good update; the caller counts skips and stops after several in a row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhf import distributed
from rlhf.ppo import activation_checkpointing, losses, mismatch
from rlhf.ppo.forward import response_logits, response_values, sequence_inputs
from rlhf.ppo.logprobs import SamplingSettings, sampling_entropy, sampling_logprobs
from rlhf.ppo.rewards import masked_mean
from rlhf.ppo.rollout import PPOStats, Rollout
from rlhf.shared_prompt.forward import OFF, SharedPromptSupport


@dataclass
class UpdateSettings:
    ppo_epochs: int
    minibatch_size: int
    cliprange: float
    cliprange_value: float
    vf_coef: float
    ptx_coef: float
    sampling: SamplingSettings
    # Packed rows of at most this many tokens for the actor's and the critic's forwards (`packing`); None: padded.
    actor_row_tokens: int | None = None
    critic_row_tokens: int | None = None
    samples_per_prompt: int = 1  # minibatches hold whole groups of this many rows
    loss_aggregation: str = "token_mean"  # losses.aggregate: token_mean, sequence_mean or dr_grpo
    kl_loss_coef: float | None = None  # β of the KL loss term (kl_in_loss); None: no such term
    # Whether the actor's and the critic's forwards run a prompt's responses behind one copy of it.
    actor_shared_prompt: SharedPromptSupport = OFF
    critic_shared_prompt: SharedPromptSupport = OFF
    # Truncated importance sampling against the engine that sampled (rlhf.ppo.mismatch); 0: off.
    rollout_is_cap: float = 0.0


@dataclass
class UpdateResult:
    stats: list[PPOStats]  # one per applied minibatch update
    skipped: int  # minibatch updates skipped for a non-finite loss
    consecutive_skips: int  # skips since the last good update (carried across steps by the caller)


def ppo_update(
    actor,
    critic,
    rollout: Rollout,
    settings: UpdateSettings,
    generator: torch.Generator,
    ptx_batches: Iterator[dict[str, torch.Tensor]] | None,
    consecutive_skips: int,
    max_consecutive_skips: int,
) -> UpdateResult:
    """Run the epochs; raise NonFiniteLossError once `max_consecutive_skips` skips come in a row."""
    stats, skipped = [], 0
    for _ in range(settings.ppo_epochs):
        for minibatch in rollout.minibatches(settings.minibatch_size, generator, settings.samples_per_prompt):
            ptx_batch = next(ptx_batches) if ptx_batches is not None else None
            critic_checkpointing = (
                activation_checkpointing.in_force(critic.module) if critic is not None else contextlib.nullcontext()
            )
            with activation_checkpointing.in_force(actor.module), critic_checkpointing:
                result = train_minibatch(actor, critic, minibatch, settings, ptx_batch)
            if result is None:
                skipped += 1
                consecutive_skips += 1
                if consecutive_skips >= max_consecutive_skips:
                    raise NonFiniteLossError(consecutive_skips)
                continue
            consecutive_skips = 0
            stats.append(result)
    return UpdateResult(stats, skipped, consecutive_skips)


class NonFiniteLossError(RuntimeError):
    def __init__(self, count: int):
        super().__init__(f"{count} non-finite losses in a row")
        self.count = count


def train_minibatch(
    actor, critic, minibatch: Rollout, settings: UpdateSettings, ptx_batch: dict[str, torch.Tensor] | None
) -> PPOStats | None:
    """One clipped-PPO step of the actor and, with a critic (GAE), one clipped-value step of the critic; None
    when skipped."""
    inputs = sequence_inputs(minibatch.query_ids, minibatch.query_mask, minibatch.response_ids, minibatch.response_mask)
    actor_loss, actor_stats = actor_loss_of(actor, minibatch, inputs, settings, ptx_batch)
    critic_loss, value_stats = None, {"value_loss": None, "value_clip_fraction": None}
    if critic is not None:
        critic_loss, value_stats = critic_loss_of(critic, minibatch, inputs, settings)

    trained_losses = [actor_loss] + ([critic_loss] if critic_loss is not None else [])
    if not all_finite(*trained_losses):
        return None
    actor.backward(actor_loss)
    actor.step()
    if critic is not None:
        critic.backward(critic_loss)
        critic.step()
    return PPOStats(loss=sum(loss.detach() for loss in trained_losses), **actor_stats, **value_stats)


def actor_loss_of(
    actor,
    minibatch: Rollout,
    inputs: dict[str, torch.Tensor],
    settings: UpdateSettings,
    ptx_batch: dict[str, torch.Tensor] | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The actor's loss: clipped surrogate, + β·KL term (kl_in_loss), + γ·PPO-ptx; and its detached statistics."""
    device = actor.device
    mask = minibatch.response_mask.to(device)
    logits = response_logits(
        actor,
        {k: v.to(device) for k, v in inputs.items()},
        minibatch.query_ids.shape[1],
        settings.actor_row_tokens,
        settings.actor_shared_prompt,
    )
    logprobs = sampling_logprobs(logits, minibatch.response_ids.to(device), settings.sampling)
    aggregation = dict(aggregation=settings.loss_aggregation, max_tokens=settings.sampling.max_new_tokens)
    weights = None
    if settings.rollout_is_cap > 0 and minibatch.engine_logprobs is not None:
        weights = mismatch.truncated_is_weights(
            minibatch.logprobs, minibatch.engine_logprobs, settings.rollout_is_cap
        ).to(device)
    policy_loss, clip_fraction, approx_kl = losses.ppo_policy_loss(
        logprobs,
        minibatch.logprobs.to(device),
        minibatch.advantages.to(device),
        mask,
        settings.cliprange,
        **aggregation,
        token_weights=weights,
    )
    with torch.no_grad():
        entropy = masked_mean(sampling_entropy(logits.detach(), settings.sampling), mask)
        ratio = masked_mean(torch.exp(logprobs.detach() - minibatch.logprobs.to(device)), mask)
    del logits
    actor_loss = policy_loss
    kl_loss = None
    if settings.kl_loss_coef is not None:
        kl_loss = losses.kl_loss(logprobs, minibatch.ref_logprobs.to(device), mask, **aggregation)
        actor_loss = actor_loss + settings.kl_loss_coef * kl_loss
    ptx_loss = torch.zeros((), device=device)
    if ptx_batch is not None:
        ptx_logits = actor(
            input_ids=ptx_batch["input_ids"].to(device), attention_mask=ptx_batch["attention_mask"].to(device)
        ).logits
        ptx_loss = losses.sft_ptx_loss(ptx_logits, ptx_batch["labels"].to(device))
    actor_loss = actor_loss + settings.ptx_coef * ptx_loss
    return actor_loss, {
        "policy_loss": policy_loss.detach(),
        "ptx_loss": ptx_loss.detach(),
        "clip_fraction": clip_fraction,
        "approx_kl": approx_kl,
        "entropy": entropy,
        "ratio": ratio,
        "kl_loss": kl_loss.detach() if kl_loss is not None else None,
    }


def critic_loss_of(
    critic, minibatch: Rollout, inputs: dict[str, torch.Tensor], settings: UpdateSettings
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """vf_coef x the clipped value loss; and the value loss and its clip fraction, detached."""
    device = critic.device
    values = response_values(
        critic,
        {k: v.to(device) for k, v in inputs.items()},
        minibatch.query_ids.shape[1],
        settings.critic_row_tokens,
        settings.critic_shared_prompt,
    )
    value_loss, value_clip_fraction = losses.ppo_value_loss(
        values,
        minibatch.values.to(device),
        minibatch.returns.to(device),
        minibatch.response_mask.to(device),
        settings.cliprange_value,
    )
    return settings.vf_coef * value_loss, {
        "value_loss": value_loss.detach(),
        "value_clip_fraction": value_clip_fraction,
    }


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every tensor is finite on every rank: all ranks must agree to skip, or their steps deadlock."""
    return distributed.all_ranks(all(torch.isfinite(t).all().item() for t in tensors))
