"""The four PPO models, each in its own DeepSpeed engine built from its own config file.

    actor      trained, starts from the SFT policy                       (e.g. ZeRO-2 or ZeRO-3)
    critic     trained, starts from the reward model, a value per token  (e.g. ZeRO-2 or ZeRO-3); GAE only
    reference  frozen SFT policy, for the KL penalty                     (e.g. ZeRO-3 inference)
    reward     frozen reward model with its saved normalisation          (e.g. ZeRO-3 inference); an ensemble's
               k members are one module (rlhf.rm.ensemble.RewardEnsemble) in this one engine

The critic-free advantage estimators (rloo, grpo, reinforce_pp...) build three: no critic engine, no critic
weights or optimiser states in memory, no value forward or backward.

A LoRA actor is its own reference: the same weights with the adapter disabled, so no second copy is held.
The files in deepspeed_configs/ use "auto" as the Hugging Face integration does; `fill_auto` resolves it
from the PPO config, so the same files serve the Trainer stages and this one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from rlhf import _compat, distributed
from rlhf.adaptation.apply import apply_adaptation, disable_adapter_context, parameter_summary
from rlhf.adaptation.checkpoint import base_model_config, load_adapted
from rlhf.adaptation.config import AdaptationConfig
from rlhf.config import load_deepspeed_config
from rlhf.distributed import free_port
from rlhf.errors import ConfigError
from rlhf.generation import stop_token_ids_of
from rlhf.models import partitioned_loading
from rlhf.ppo import activation_checkpointing
from rlhf.ppo.critic import TokenValueModel
from rlhf.ppo.forward import causal_lm_logits, release_gathered
from rlhf.ppo.optimizers import build_optimizer
from rlhf.ppo.packing import keeps_sequences_apart, row_tokens_for
from rlhf.rm.ensemble import members_of
from rlhf.shared_prompt.forward import OFF, SharedPromptSupport, check_support, reward_model_support


def init_distributed() -> None:
    """torch.distributed through DeepSpeed: under the `deepspeed` launcher, or as a world of one under
    `python -m` (gloo on CPU), so that the same code runs both ways."""
    import deepspeed
    import torch.distributed as dist

    if "RANK" not in os.environ:
        # DeepSpeed reads these even when the process group already exists (a second run in one process).
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()),
        )
    if dist.is_available() and dist.is_initialized():
        return
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def fill_auto(
    ds_config: dict[str, Any],
    *,
    micro_batch_size: int,
    max_grad_norm: float,
    hidden_size: int,
    source: str,
    bf16: bool = False,
) -> dict[str, Any]:
    """A copy of `ds_config` with every "auto" resolved as the Hugging Face integration resolves it.

    One optimiser step per minibatch: no gradient accumulation, so train_batch_size = minibatch x world size.
    bf16: the stage's `bf16` (already resolved: on where the GPU supports it, unless set).
    """

    automatic = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * distributed.world_size(),
        "gradient_clipping": max_grad_norm,
        "bf16.enabled": bf16,
        "fp16.enabled": False,
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }

    def filled(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {
                key: filled(value, f"{prefix}{key}")
                if not isinstance(value, dict)
                else filled(value, f"{prefix}{key}.")
                for key, value in node.items()
            }
        if node == "auto":
            if prefix not in automatic:
                raise ConfigError(f"{source}: '{prefix}' is \"auto\", which PPO cannot resolve; give a value")
            return automatic[prefix]
        return node

    return filled(ds_config, "")


def zero_stage(engine) -> int:
    return engine.zero_optimization_stage() if engine is not None else 0


@dataclass
class PPOEngines:
    actor: Any  # DeepSpeedEngine around the policy (a PeftModel for LoRA)
    critic: Any  # DeepSpeedEngine around a TokenValueModel, or None for a critic-free estimator
    reference: Any  # DeepSpeedEngine, or None when the LoRA actor serves as its own reference
    reward: Any  # DeepSpeedEngine around the reward model (an ensemble: one module holding its members)
    reward_tokenizer: Any
    reward_offsets: tuple[float, ...]  # each member's, subtracted from its raw scores (RM stage normalisation)
    reward_stop_token_ids: tuple[int, ...] = ()  # what ends a response for the reward model (its directory's)
    # Tokens per packed row of the padding-free forwards of actor, reference and critic; None: padded.
    row_tokens: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(PACKED_ROLES))
    # Whether each model's forwards may run a prompt's responses behind one copy of it (`rlhf.shared_prompt`).
    shared_prompt: dict[str, SharedPromptSupport] = field(default_factory=lambda: dict.fromkeys(SHARED_ROLES, OFF))

    def reference_context(self):
        """Where the reference's forward runs: the actor with its adapter disabled, or nothing special."""
        if self.reference is not None:
            return contextlib.nullcontext()

        return disable_adapter_context(self.actor.module)

    @property
    def reference_module(self):
        return self.reference.module if self.reference is not None else self.actor.module


def adaptation_for(config, method: str) -> AdaptationConfig:
    """An AdaptationConfig with the stage's LoRA settings and the given method (actor and critic differ)."""
    values = {f.name: getattr(config, f.name) for f in fields(AdaptationConfig)}
    values["adaptation_method"] = method
    return AdaptationConfig(**values)


def build_engines(config, paths: dict[str, str], tokenizer) -> PPOEngines:
    """Load the models from `paths` (keys actor, critic, reference, reward; no critic for a critic-free
    estimator) and wrap each in its engine.

    Each model loads as its engine holds it: under ZeRO-3 partitioned from the start (`partitioned_loading`),
    so that no rank ever holds a whole model, not even while the engines are being built.
    """
    from rlhf.rm.model import load_reward_model

    remote, attention = config.trust_remote_code, config.attn_implementation
    ds_configs = engine_configs(config, paths)
    with partitioned_loading(ds_configs["actor"]):
        actor_model = apply_adaptation(
            load_adapted(paths["actor"], task="causal_lm", trust_remote_code=remote, attn_implementation=attention),
            adaptation_for(config, config.adaptation_method),
            task="causal_lm",
        )
    critic_model = critic_model_for(config, paths, tokenizer, ds_configs) if config.needs_critic else None
    if distributed.is_main_process():
        critic_summary = (
            f"critic {config.critic_adaptation_method}: {parameter_summary(critic_model)}"
            if critic_model is not None
            else f"no critic ({config.advantage_estimator})"
        )
        print(f"actor {config.adaptation_method}: {parameter_summary(actor_model)}; {critic_summary}", flush=True)

    if config.gradient_checkpointing:
        activation_checkpointing.enable(actor_model)
        if critic_model is not None:
            activation_checkpointing.enable(critic_model.model)
    actor = _trained_engine(actor_model, ds_configs["actor"], config.actor_learning_rate, config)
    critic = None
    if critic_model is not None:
        critic = _trained_engine(critic_model, ds_configs["critic"], config.critic_learning_rate, config)

    reference = None
    if not uses_adapter_as_reference(config, paths):
        with partitioned_loading(ds_configs["reference"]):
            reference_model = load_adapted(
                paths["reference"], task="causal_lm", trust_remote_code=remote, attn_implementation=attention
            )
        reference = _frozen_engine(reference_model, ds_configs["reference"])
    with partitioned_loading(ds_configs["reward"]):
        reward_model, reward_tokenizer, normalization = load_reward_model(
            paths["reward"], trust_remote_code=remote, attn_implementation=attention
        )
    reward = _frozen_engine(reward_model, ds_configs["reward"])
    # from_pretrained leaves models in eval mode, which is also what disable_dropout wants: dropout would make the
    # rollout's log π_old differ from the update's log π for the same weights. The frozen models never drop out.
    for engine in (actor, critic):
        if engine is not None:
            engine.module.train(not config.disable_dropout)
    for engine in (reference, reward):
        if engine is not None:
            engine.module.eval()
    engines = PPOEngines(
        actor,
        critic,
        reference,
        reward,
        reward_tokenizer,
        normalization.offsets,
        stop_token_ids_of(paths["reward"], reward_tokenizer),
    )
    if config.padding_free:
        engines.row_tokens = padding_free_rows(engines, len(tokenizer), config.padding_free_row_tokens)
    if config.shared_prompt_forward and config.samples_per_prompt > 1:
        engines.shared_prompt = shared_prompt_supports(engines)
    return engines


def roles_of(config) -> tuple[str, ...]:
    """The models this run builds: all of ROLES, less the critic when the estimator needs none."""
    return tuple(role for role in ROLES if role != "critic" or config.needs_critic)


def engine_configs(config, paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The DeepSpeed config of every model this run builds, its "auto"s resolved."""

    hidden = base_model_config(paths["actor"], config.trust_remote_code).get_text_config().hidden_size
    return {
        role: engine_config(getattr(config, f"{role}_deepspeed"), config, hidden, trained=role in TRAINED)
        for role in roles_of(config)
    }


def critic_model_for(config, paths: dict[str, str], tokenizer, ds_configs: dict[str, dict[str, Any]]):
    """The critic: the reward model at `paths["critic"]` read at every token, adapted as configured. An ensemble's
    directory holds its members' weight average at its top level, which is what loads here: the critic starts from
    one model that scores nearly as the members' mean does (rlhf.rm.ensemble), at one model's cost."""
    from rlhf.rm.model import RewardNormalization

    with partitioned_loading(ds_configs["critic"]):
        critic_base = load_adapted(
            paths["critic"],
            task="reward",
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
        )
    if critic_base.config.pad_token_id is None:
        critic_base.config.pad_token_id = tokenizer.pad_token_id
    # The critic's start is a reward model: its saved normalisation puts V on the rewards' scale.
    return TokenValueModel(
        apply_adaptation(critic_base, adaptation_for(config, config.critic_adaptation_method), task="reward"),
        value_offset=RewardNormalization.load(paths["critic"]).offset,
    )


PACKED_ROLES = ("actor", "reference", "critic")


def padding_free_rows(engines: PPOEngines, vocab_size: int, row_tokens: int) -> dict[str, int | None]:
    """Tokens per packed row for each of actor, reference and critic whose model keeps packed sequences apart,
    else None (padded, or no critic), with a line naming any that runs padded."""

    # role: (engine, per-token forward, the transformers model whose config names its attention)
    models = {"actor": (engines.actor, causal_lm_logits(engines.actor.module), engines.actor.module)}
    if engines.critic is not None:
        models["critic"] = (engines.critic, engines.critic.module, engines.critic.module.model)
    if engines.reference is not None:
        models["reference"] = (engines.reference, causal_lm_logits(engines.reference.module), engines.reference.module)
    rows = {}
    for role, (engine, forward, model) in models.items():
        apart = keeps_sequences_apart(forward, engine.module, vocab_size, engine.device)
        release_gathered(engine)
        rows[role] = row_tokens_for(_compat.attention_implementation(model.config), row_tokens) if apart else None
    rows.setdefault("reference", rows["actor"])  # the actor with its adapter disabled
    rows.setdefault("critic", None)  # no critic to run
    built = [role for role in PACKED_ROLES if role != "critic" or engines.critic is not None]
    padded = [role for role in built if rows[role] is None]
    if padded and distributed.is_main_process():
        print(
            f"padding_free: the {', '.join(padded)} model's attention crosses packed sequences; it runs padded",
            flush=True,
        )
    return {role: rows[role] for role in PACKED_ROLES}


SHARED_ROLES = ("actor", "reference", "critic", "reward")


def shared_prompt_supports(engines: PPOEngines) -> dict[str, SharedPromptSupport]:
    """Whether each model's forwards may share a prompt among its responses (checked on every rank, the most
    cautious answer winning), with a line naming any model that runs one sequence per response, and why."""

    # role: (engine, per-token forward, the module it runs in, the transformers config naming its attention)
    models = {
        "actor": (
            engines.actor,
            causal_lm_logits(engines.actor.module),
            engines.actor.module,
            engines.actor.module.config,
        )
    }
    if engines.critic is not None:
        models["critic"] = (
            engines.critic,
            engines.critic.module,
            engines.critic.module,
            engines.critic.module.model.config,
        )
    if engines.reference is not None:
        models["reference"] = (
            engines.reference,
            causal_lm_logits(engines.reference.module),
            engines.reference.module,
            engines.reference.module.config,
        )
    checked = {}
    for role, (engine, forward, module, model_config) in models.items():
        checked[role] = check_support(forward, module, model_config, engine.device, across_ranks=True)
        release_gathered(engine)
    checked.setdefault("reference", checked["actor"])  # the actor with its adapter disabled
    # An ensemble's members share their architecture: the first one's check speaks for all.
    checked["reward"] = reward_model_support(members_of(engines.reward.module)[0], across_ranks=True)
    release_gathered(engines.reward)
    if distributed.is_main_process():
        for reason in dict.fromkeys(s.reason for s in checked.values() if not s.enabled):
            roles = [
                role
                for role in SHARED_ROLES
                if role in checked and checked[role].reason == reason and not checked[role].enabled
            ]
            print(checked[roles[0]].line(f"{', '.join(roles)} model{'s' if len(roles) > 1 else ''}"), flush=True)
    return {role: checked.get(role, OFF) for role in SHARED_ROLES}


ROLES = ("actor", "critic", "reference", "reward")
TRAINED = ("actor", "critic")


def engine_config(config_path: str, config, hidden: int, *, trained: bool) -> dict[str, Any]:
    """The DeepSpeed config of one engine, every "auto" resolved; a frozen engine clips no gradients."""
    ds_config = fill_auto(
        load_deepspeed_config(config_path),
        micro_batch_size=config.minibatch_size,
        max_grad_norm=config.max_grad_norm,
        hidden_size=hidden,
        source=config_path,
        bf16=config.bf16,
    )
    if not trained:
        ds_config.pop("gradient_clipping", None)
    return ds_config


def uses_adapter_as_reference(config, paths: dict[str, str]) -> bool:
    """A LoRA actor whose reference is its own starting point: disable the adapter instead of a second copy."""
    return config.adaptation_method == "lora" and paths["reference"] == paths["actor"]


def _trained_engine(model, ds_config: dict[str, Any], learning_rate: float, config):
    import deepspeed

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(parameters, ds_config, learning_rate, config.weight_decay)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, lr_scheduler=learning_rate_schedule(optimizer, config)
    )
    _compat.share_fp32_master_weights(engine)
    skip_all_reduce_in_a_world_of_one(engine)
    return engine


def skip_all_reduce_in_a_world_of_one(engine) -> bool:
    """Without ZeRO and with one data-parallel process, DeepSpeed still all-reduces every gradient after each
    backward: it flattens them into buckets, reduces over a group of one, and copies them back (RESULTS.md,
    section 1). The average over one process is the
    gradient itself, so the reduction is switched off there; ZeRO stages keep it, as their optimisers move
    gradients into partitions through it. Returns whether it was switched off."""
    alone = getattr(engine, "dp_world_size", 1) == 1 and getattr(engine, "seq_dp_world_size", 1) == 1
    if alone and engine.zero_optimization_stage() == 0:
        _compat.skip_backward_all_reduce(engine)
        return True
    return False


def learning_rate_schedule(optimizer, config):
    """Warmup then constant, linear or cosine decay over all the run's optimiser steps (transformers'
    schedulers, as TRL's PPO had through the Trainer). DeepSpeed steps it with each optimiser step and saves
    it in the checkpoint."""
    from transformers import get_scheduler

    # transformers' "constant" ignores warmup; "constant_with_warmup" with 0 steps is the same constant.
    name = "constant_with_warmup" if config.lr_scheduler_type == "constant" else config.lr_scheduler_type
    return get_scheduler(
        name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps * config.updates_per_step
    )


def _frozen_engine(model, ds_config: dict[str, Any]):
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=ds_config)
    engine.module.eval()
    return engine
