"""The PPO update: several epochs over shuffled minibatches of one rollout, actor and critic each a step.

A non-finite loss on any rank skips that minibatch on every rank (no backward, no step), so the weights and
optimiser states stay those of the last good update; the caller counts skips and stops after several in a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from rlhf.ppo import activation_checkpointing, losses
from rlhf.ppo.experience import response_logits, response_values, sequence_inputs
from rlhf.ppo.logprobs import SamplingSettings, sampling_entropy, sampling_logprobs
from rlhf.ppo.rewards import masked_mean
from rlhf.ppo.rollout import PPOStats, Rollout


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


@dataclass
class UpdateResult:
    stats: list[PPOStats]  # one per applied minibatch update
    skipped: int  # minibatch updates skipped for a non-finite loss
    consecutive_skips: int  # skips since the last good update (carried across steps by the caller)


def ppo_update(actor, critic, rollout: Rollout, settings: UpdateSettings, generator: torch.Generator,
               ptx_batches: Iterator[dict[str, torch.Tensor]] | None, consecutive_skips: int,
               max_consecutive_skips: int) -> UpdateResult:
    """Run the epochs; raise NonFiniteLossError once `max_consecutive_skips` skips come in a row."""
    stats, skipped = [], 0
    for _ in range(settings.ppo_epochs):
        for minibatch in rollout.minibatches(settings.minibatch_size, generator):
            ptx_batch = next(ptx_batches) if ptx_batches is not None else None
            with activation_checkpointing.in_force(actor.module), activation_checkpointing.in_force(critic.module):
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


def train_minibatch(actor, critic, minibatch: Rollout, settings: UpdateSettings,
                    ptx_batch: dict[str, torch.Tensor] | None) -> PPOStats | None:
    """One clipped-PPO step of the actor and one clipped-value step of the critic; None when skipped."""
    mask = minibatch.response_mask
    inputs = sequence_inputs(minibatch.query_ids, minibatch.query_mask, minibatch.response_ids, mask)
    query_length = minibatch.query_ids.shape[1]
    device = actor.device

    logits = response_logits(actor, {k: v.to(device) for k, v in inputs.items()}, query_length,
                             settings.actor_row_tokens)
    logprobs = sampling_logprobs(logits, minibatch.response_ids.to(device), settings.sampling)
    policy_loss, clip_fraction, approx_kl = losses.ppo_policy_loss(
        logprobs, minibatch.logprobs.to(device), minibatch.advantages.to(device), mask.to(device), settings.cliprange)
    with torch.no_grad():
        entropy = masked_mean(sampling_entropy(logits.detach(), settings.sampling), mask.to(device))
        ratio = masked_mean(torch.exp(logprobs.detach() - minibatch.logprobs.to(device)), mask.to(device))
    del logits
    ptx_loss = torch.zeros((), device=device)
    if ptx_batch is not None:
        ptx_logits = actor(input_ids=ptx_batch["input_ids"].to(device),
                           attention_mask=ptx_batch["attention_mask"].to(device)).logits
        ptx_loss = losses.sft_ptx_loss(ptx_logits, ptx_batch["labels"].to(device))
    actor_loss = policy_loss + settings.ptx_coef * ptx_loss

    critic_device = critic.device
    values = response_values(critic, {k: v.to(critic_device) for k, v in inputs.items()}, query_length,
                             settings.critic_row_tokens)
    value_loss, value_clip_fraction = losses.ppo_value_loss(
        values, minibatch.values.to(critic_device), minibatch.returns.to(critic_device), mask.to(critic_device),
        settings.cliprange_value)
    critic_loss = settings.vf_coef * value_loss

    if not all_finite(actor_loss, critic_loss):
        return None
    actor.backward(actor_loss)
    actor.step()
    critic.backward(critic_loss)
    critic.step()
    return PPOStats(
        loss=(actor_loss + critic_loss).detach(), policy_loss=policy_loss.detach(), value_loss=value_loss.detach(),
        ptx_loss=ptx_loss.detach(), clip_fraction=clip_fraction, value_clip_fraction=value_clip_fraction,
        approx_kl=approx_kl, entropy=entropy, ratio=ratio,
    )


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every tensor is finite on every rank: all ranks must agree to skip, or their steps deadlock."""
    import torch.distributed as dist

    finite = torch.tensor([float(all(torch.isfinite(t).all().item() for t in tensors))], device=tensors[0].device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item() == 1.0)
