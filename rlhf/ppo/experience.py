"""Making PPO experience: sample responses, score them four ways (three without a critic), turn scores into
advantages.

    generate        the actor samples a response per prompt (KV cache; ZeRO-3: parameters gathered once
                    for the whole batch, or per step with synced_gpus)
    score           log π_old and log π_ref under the sampling distribution, V(s_t) from the critic (GAE
                    only), and the reward model's score of each full response (an ensemble's members' scores,
                    aggregated: rlhf.ppo.reward_aggregation)
    advantages      score shaping (running normalisation, clip, missing-EOS penalty), the per-token KL
                    penalty, then GAE and whitening or a critic-free estimator (rlhf.ppo.estimators)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from rlhf import _compat, distributed
from rlhf.data.formatting import encode_prompts, response_text, reward_input_ids
from rlhf.generation import neutral_generation_defaults
from rlhf.models import same_tokenization
from rlhf.ppo import activation_checkpointing
from rlhf.ppo.engines import PPOEngines, zero_stage
from rlhf.ppo.estimators import (
    grpo_advantages,
    minus_group_mean,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_rewards,
)
from rlhf.ppo.forward import in_micro_batches, release_gathered, response_logits, response_values, sequence_inputs
from rlhf.ppo.logprobs import SamplingSettings, sampling_logprobs
from rlhf.ppo.reward_aggregation import RewardAggregation
from rlhf.ppo.rewards import (
    RunningMoments,
    gae_advantages,
    kl_penalized_rewards,
    masked_whiten,
    response_mask_after_eos,
    score_with_eos_penalty,
)
from rlhf.ppo.rollout import Rollout
from rlhf.shared_prompt.layout import consecutive_runs, runs_of_equal_rows


@dataclasses.dataclass
class PromptBatch:
    prompts: list[Any]  # as read from the prompts file (text or chat messages)
    query_ids: torch.Tensor  # (B, Q) left-padded
    query_mask: torch.Tensor  # (B, Q)


def tokenize_prompts(tokenizer, prompts: Sequence[Any]) -> PromptBatch:
    """Left-padded prompt tokens, as `generate` wants them."""
    encoded = encode_prompts(tokenizer, prompts)
    return PromptBatch(list(prompts), encoded["input_ids"], encoded["attention_mask"])


# ---------------------------------------------------------------------------------------------------------
# 1. generate
# ---------------------------------------------------------------------------------------------------------


def generate(actor, batch: PromptBatch, generation_config, zero3_generation: str) -> torch.Tensor:
    """(B, T) sampled response tokens, padded after EOS.

    Under ZeRO-3 each forward of `generate` would gather every layer's shards again, once per new token.
    `gather_once` gathers the whole actor for the rollout (DeepSpeed-Chat's hybrid engine does the same), which
    needs the full model in memory on every rank; `per_step` keeps the shards and synchronises the ranks at
    each step (`synced_gpus`), so that a rank that finished early still joins the others' gathers.
    """
    module = actor.module
    gathered = contextlib.nullcontext()
    synced_gpus = False
    if zero_stage(actor) == 3:
        if zero3_generation == "gather_once":
            gathered = gathered_for_generation(actor)
        else:
            synced_gpus = True
    device = actor.device
    with gathered, torch.no_grad(), neutral_generation_defaults(module), activation_checkpointing.paused(module):
        output = module.generate(
            input_ids=batch.query_ids.to(device),
            attention_mask=batch.query_mask.to(device),
            generation_config=generation_config,
            synced_gpus=synced_gpus,
        )
    return output[:, batch.query_ids.shape[1] :].cpu()


@contextlib.contextmanager
def gathered_for_generation(engine):
    """Every ZeRO-3 parameter of the engine's module gathered, and kept gathered, until the block ends.

    GatheredParameters alone is not enough: ZeRO-3's module hooks release a parameter after each sub-module's
    forward unless it is persistent, so every new token would gather the model again, and ranks generating
    different numbers of tokens would then wait on each other's gathers. With the whole model gathered the
    hooks have nothing left to do but cost time at every module of every token, so they are taken off for the
    block and put back after (as DeepSpeed-Chat's hybrid engine runs generation outside them). Should a
    DeepSpeed version lack those methods, the parameters are instead marked persistent for the block, which
    keeps them resident with the hooks still on.
    """
    import deepspeed

    parameters = list(engine.module.parameters())
    offload = _compat.zero3_offload_of(engine)
    unhooked = (
        _compat.zero3_hooks_removed(offload) if _compat.can_remove_zero3_hooks(offload) else contextlib.nullcontext()
    )
    with (
        deepspeed.zero.GatheredParameters(parameters, modifier_rank=None),
        _compat.zero3_parameters_persistent(parameters),
        unhooked,
    ):
        yield


def choose_zero3_generation(setting: str, actor) -> str:
    """'gather_once' when the whole actor fits twice over in every rank's free memory (its shards stay), else
    'per_step'. Decided once, the same on every rank."""
    if setting != "auto":
        return setting
    full_bytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in actor.module.parameters())
    if torch.cuda.is_available():
        free_bytes, _ = torch.cuda.mem_get_info()
    else:
        import psutil

        free_bytes = psutil.virtual_memory().available
    return decide_zero3_generation(full_bytes, free_bytes)


def decide_zero3_generation(full_bytes: int, free_bytes: int) -> str:
    """The 'auto' choice from this rank's numbers and every other rank's: gather once only if all ranks can.

    Ranks that chose differently would wait on different collectives (one on a whole-model gather, the other on
    per-step gathers) and never return, so the least free memory of any rank decides for all.
    """

    return "gather_once" if distributed.all_ranks(2 * full_bytes < free_bytes) else "per_step"


# ---------------------------------------------------------------------------------------------------------
# 2. score
# ---------------------------------------------------------------------------------------------------------


def _on(device, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in inputs.items()}


@torch.no_grad()
def score(
    engines: PPOEngines,
    batch: PromptBatch,
    response_ids: torch.Tensor,
    tokenizer,
    settings: SamplingSettings,
    reward_max_length: int,
    forward_batch_size: int = 0,
    aggregation: RewardAggregation = RewardAggregation(),
) -> Rollout:
    """A Rollout holding everything measured at sampling time (rewards and advantages still None).

    Each model scores `forward_batch_size` rollouts per forward (0: all at once). An ensemble's member scores are
    kept in the rollout beside the one score `aggregation` makes of them."""
    response_mask = response_mask_after_eos(response_ids, settings.stops(tokenizer), tokenizer.pad_token_id)
    rows = {**sequence_inputs(batch.query_ids, batch.query_mask, response_ids, response_mask), "labels": response_ids}
    query_length = batch.query_ids.shape[1]

    def logprobs_under(model, device, role):
        def forward(part):
            labels = part.pop("labels").to(device)
            logits = response_logits(
                model, _on(device, part), query_length, engines.row_tokens[role], engines.shared_prompt[role]
            )
            return sampling_logprobs(logits, labels, settings)

        return forward

    logprobs = in_micro_batches(
        logprobs_under(engines.actor.module, engines.actor.device, "actor"), rows, forward_batch_size
    )
    release_gathered(engines.actor)
    with engines.reference_context():
        device = engines.reference.device if engines.reference is not None else engines.actor.device
        ref_logprobs = in_micro_batches(
            logprobs_under(engines.reference_module, device, "reference"), rows, forward_batch_size
        )
    release_gathered(engines.reference if engines.reference is not None else engines.actor)

    def critic_values(part):
        part.pop("labels")
        return response_values(
            engines.critic.module,
            _on(engines.critic.device, part),
            query_length,
            engines.row_tokens["critic"],
            engines.shared_prompt["critic"],
        )

    values = None
    if engines.critic is not None:
        values = in_micro_batches(critic_values, rows, forward_batch_size).float().cpu()
        release_gathered(engines.critic)
    members = member_reward_scores(
        engines,
        tokenizer,
        batch,
        response_ids,
        response_mask,
        reward_max_length,
        settings.stops(tokenizer),
        forward_batch_size,
    ).cpu()
    release_gathered(engines.reward)
    return Rollout(
        query_ids=batch.query_ids,
        query_mask=batch.query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs.float().cpu(),
        ref_logprobs=ref_logprobs.float().cpu(),
        values=values,
        scores=aggregation(members),
        member_scores=members if members.shape[1] > 1 else None,
    )


def member_reward_scores(
    engines: PPOEngines,
    tokenizer,
    batch: PromptBatch,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    max_length: int,
    stop_token_ids: Sequence[int] = (),
    forward_batch_size: int = 0,
) -> torch.Tensor:
    """(B, k) normalised score of each rollout by each of the reward model's k members (k = 1 for one reward
    model), each less its own offset, read as `reward_inputs` gives it; rollouts of one prompt in consecutive rows
    behind one copy of it, where the reward model passed its check."""
    from rlhf.rm.model import member_scores, pad_right

    sequences = reward_inputs(
        tokenizer,
        engines.reward_tokenizer,
        batch,
        response_ids,
        response_mask,
        max_length,
        stop_token_ids,
        engines.reward_stop_token_ids,
    )
    input_ids, attention_mask = pad_right(sequences, engines.reward_tokenizer.pad_token_id)
    # Each rollout's prompt, numbered: consecutive rows with one number are one prompt's group.
    runs = consecutive_runs(batch.prompts)
    prompt_index = torch.repeat_interleave(torch.arange(len(runs)), torch.tensor(runs, dtype=torch.long))
    device = engines.reward.device

    def forward(part):
        return member_scores(
            engines.reward.module,
            part["input_ids"].to(device),
            part["attention_mask"].to(device),
            engines.shared_prompt["reward"],
            runs_of_equal_rows(part["prompt_index"][:, None]),
        )

    raw = in_micro_batches(
        forward,
        {"input_ids": input_ids, "attention_mask": attention_mask, "prompt_index": prompt_index},
        forward_batch_size,
    )
    return raw.float() - torch.tensor(engines.reward_offsets, device=raw.device)


def reward_inputs(
    tokenizer,
    reward_tokenizer,
    batch: PromptBatch,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    max_length: int,
    stop_token_ids: Sequence[int] = (),
    reward_stop_token_ids: Sequence[int] = (),
) -> list[list[int]]:
    """The ids the reward model reads for each rollout, as the RM stage trained it (`reward_input_ids`): the
    prompt's ids and the generated ids through the first stop token (EOS appended to a response cut at
    max_new_tokens). A reward model that tokenizes otherwise reads the response decoded in context and tokenized as
    its own policy would write it. An input over `max_length` loses the start of its prompt."""
    same = same_tokenization(tokenizer, reward_tokenizer)
    sequences = []
    for prompt, query, query_mask, response, mask in zip(
        batch.prompts, batch.query_ids, batch.query_mask, response_ids, response_mask
    ):
        prompt_ids, generated = query[query_mask.bool()].tolist(), response[mask.bool()].tolist()
        if same:
            ids = reward_input_ids(tokenizer, prompt, generated, stop_token_ids=stop_token_ids, prompt_ids=prompt_ids)
        else:
            ids = reward_input_ids(
                reward_tokenizer,
                prompt,
                response_text(tokenizer, prompt_ids, generated),
                stop_token_ids=reward_stop_token_ids,
            )
        sequences.append(ids[-max_length:])
    return sequences


def decode_responses(
    tokenizer, batch: PromptBatch, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> list[str]:
    """Each rollout's response as text, decoded in context (`response_text`)."""
    return [
        response_text(tokenizer, query[query_mask.bool()].tolist(), response[mask.bool()].tolist())
        for query, query_mask, response, mask in zip(batch.query_ids, batch.query_mask, response_ids, response_mask)
    ]


# ---------------------------------------------------------------------------------------------------------
# 3. advantages
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardShaping:
    """How scores become per-token rewards and advantages (`with_advantages`): the config's values, by keyword."""

    kl_coef: float  # β of the penalty in the reward; 0 when the KL is a loss term (kl_in_loss)
    kl_estimator: str = "k1"
    score_clip: float = 0.0  # 0: off
    missing_eos_penalty: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    advantage_estimator: str = "gae"  # one of rlhf.ppo.options.ADVANTAGE_ESTIMATORS
    samples_per_prompt: int = 1
    scale_rewards: bool = True  # grpo: divide by the group's std (false: Dr.GRPO)


def with_advantages(
    rollout: Rollout, shaping: RewardShaping, eos_token_id: int | Sequence[int], moments: RunningMoments | None
) -> tuple[Rollout, torch.Tensor]:
    """The rollout with rewards, advantages and (GAE) returns; and the per-token KL (B, T).

    Scores: normalised by the running moments of all ranks' scores so far (when `moments` is given), clipped to
    ±score_clip, then minus the missing-EOS penalty. The penalty comes last so that it is in the units the
    user set (of normalised scores when normalising) and is never clipped away, and the moments see only the
    reward model. Then r_t = -β·KL_t + [t = last]·score, and the estimator's advantages (`ADVANTAGES`).
    """
    scores = shaped_scores(rollout, shaping, eos_token_id, moments)
    rewards, kl = kl_penalized_rewards(
        scores, rollout.logprobs, rollout.ref_logprobs, rollout.response_mask, shaping.kl_coef, shaping.kl_estimator
    )
    rewards, advantages, returns = ADVANTAGES[shaping.advantage_estimator](rollout, scores, rewards, shaping)
    return dataclasses.replace(rollout, rewards=rewards, advantages=advantages, returns=returns), kl


def shaped_scores(
    rollout: Rollout, shaping: RewardShaping, eos_token_id: int | Sequence[int], moments: RunningMoments | None
) -> torch.Tensor:
    """(B,) scores normalised (running moments of every rank's scores), clipped, less the missing-EOS penalty."""
    scores = rollout.scores
    if moments is not None:
        moments.update(scores, across_ranks=True)
        scores = moments.normalize(scores)
    if shaping.score_clip > 0:
        scores = scores.clamp(-shaping.score_clip, shaping.score_clip)
    return score_with_eos_penalty(scores, rollout.response_ids, eos_token_id, shaping.missing_eos_penalty)


# Each estimator: (rollout, shaped scores, per-token rewards, shaping) -> (rewards, advantages, returns or None).


def _gae(rollout, scores, rewards, shaping):
    """GAE on the critic's values, whitened over the tokens of every rank."""
    advantages, returns = gae_advantages(rollout.values, rewards, rollout.response_mask, shaping.gamma, shaping.lam)
    return rewards, masked_whiten(advantages, rollout.response_mask, across_ranks=True), returns


def _rloo(rollout, scores, rewards, shaping):
    """The leave-one-out baseline on the sequence reward (score - β Σ KL)."""
    mask = rollout.response_mask
    return rewards, rloo_advantages(sequence_rewards(rewards, mask), mask, shaping.samples_per_prompt), None


def _grpo(rollout, scores, rewards, shaping):
    """The group's mean (and std, unless Dr.GRPO) on the sequence reward (score - β Σ KL)."""
    mask = rollout.response_mask
    return (
        rewards,
        grpo_advantages(sequence_rewards(rewards, mask), mask, shaping.samples_per_prompt, shaping.scale_rewards),
        None,
    )


def _reinforce_pp(rollout, scores, rewards, shaping):
    """Discounted returns of the per-token rewards, normalised over every rank's tokens."""
    return rewards, reinforce_pp_advantages(rewards, rollout.response_mask, shaping.gamma, across_ranks=True), None


def _reinforce_pp_baseline(rollout, scores, rewards, shaping):
    """REINFORCE++ on rewards whose scores had their group's mean taken off."""
    centred, _ = kl_penalized_rewards(
        minus_group_mean(scores, shaping.samples_per_prompt),
        rollout.logprobs,
        rollout.ref_logprobs,
        rollout.response_mask,
        shaping.kl_coef,
        shaping.kl_estimator,
    )
    return _reinforce_pp(rollout, scores, centred, shaping)


ADVANTAGES = {
    "gae": _gae,
    "rloo": _rloo,
    "grpo": _grpo,
    "reinforce_pp": _reinforce_pp,
    "reinforce_pp_baseline": _reinforce_pp_baseline,
}
