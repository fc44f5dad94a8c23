"""What a PPO run reads: four models (three without a critic) by reference, the prompts (checked up front),
optional PPO-ptx data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf import distributed
from rlhf.data.formatting import demonstration_ids
from rlhf.data.overlong import fit, fit_demonstrations, fit_prompts
from rlhf.errors import ConfigError, DataError
from rlhf.models import load_tokenizer, same_tokenization
from rlhf.registry import Entry, Registry, resolve_model


@dataclass
class PPOInputs:
    paths: dict[str, str]  # actor, critic (GAE only), reference, reward: a directory or hub id each
    entries: dict[str, Entry | None]  # the registry entries they came from
    registry: Registry
    tokenizer: Any  # the policy's
    prompts: list[Any]
    eval_prompts: list[Any]
    seed: int
    prompts_per_rank: int
    samples_per_prompt: int
    fitted: list[tuple[str, str, Any]] = field(default_factory=list)  # (name, file, Fitted) of each prompts file

    def lineage(self, config) -> dict[str, Any]:
        """Where the trained policy came from, for its registry entry: base model, parents, data files."""
        actor, reward = self.entries["actor"], self.entries["reward"]
        return {
            "base_model": (actor.base_model if actor else "") or self.paths["actor"],
            "parents": list(dict.fromkeys(e.reference for e in (actor, reward) if e is not None)),
            "data_files": [config.prompts_file] + ([config.ptx_file] if config.ptx_coef else []),
        }

    def prompts_for_step(self, step: int) -> list[Any]:
        from rlhf.ppo.data import prompts_for_step

        return prompts_for_step(
            self.prompts,
            step,
            self.prompts_per_rank,
            distributed.world_size(),
            distributed.global_rank(),
            self.seed,
            self.samples_per_prompt,
        )


def read_inputs(config) -> PPOInputs:
    """The four models by reference (each one's config read, so that a model that cannot load is refused now),
    the policy's tokenizer, and the prompts fitted to max_prompt_length by the `overlong` policy, before anything
    loads."""
    from rlhf.adaptation.checkpoint import base_model_config
    from rlhf.data.prompts import load_prompts

    registry = Registry(config.registry_dir or None)
    references = {
        "actor": config.model_name_or_path,
        "reference": config.reference_model or config.model_name_or_path,
        "reward": config.reward_model,
    }
    if config.needs_critic:  # the critic-free estimators never read critic_model
        references["critic"] = config.critic_model
    paths, entries = {}, {}
    for role, reference in references.items():
        try:
            paths[role], entries[role] = resolve_model(reference, registry)
            base_model_config(paths[role], trust_remote_code=config.trust_remote_code)
        except ConfigError as error:
            raise ConfigError(f"{role} model: {error}") from None
    check_reward_aggregation(config, paths["reward"])
    tokenizer = load_tokenizer(paths["actor"], trust_remote_code=config.trust_remote_code)
    if config.needs_critic:
        check_critic_tokenizer(tokenizer, paths, config.trust_remote_code)

    def fitted(name, path):
        return (
            name,
            path,
            fit_prompts(
                load_prompts(path),
                tokenizer,
                max_tokens=config.max_prompt_length,
                setting="max_prompt_length",
                policy=config.overlong,
                file=path,
            ),
        )

    fitted_prompts = [fitted("prompts", config.prompts_file)] + (
        [fitted("eval_prompts", config.eval_prompts_file)] if config.eval_prompts_file else []
    )
    eval_prompts = []
    if config.eval_prompts_file:
        eval_prompts, shortfall = held_out_prompts(fitted_prompts[1][2], config.eval_prompts)
        if shortfall and distributed.is_main_process():
            print(f"{config.eval_prompts_file}: {shortfall}", flush=True)
    return PPOInputs(
        paths,
        entries,
        registry,
        tokenizer,
        fitted_prompts[0][2].kept,
        eval_prompts,
        config.seed,
        config.prompts_per_rank,
        config.samples_per_prompt,
        fitted_prompts,
    )


def held_out_prompts(fitted, wanted: int) -> tuple[list[Any], str]:
    """The first `wanted` held-out prompts that fit, and a line saying why there are fewer ("" when there are not)."""
    prompts = fitted.kept[:wanted]
    if len(prompts) == wanted:
        return prompts, ""
    why = f", after {fitted.over} over {fitted.limit} were left out" if fitted.over else ""
    return prompts, (
        f"evaluating on {len(prompts)} prompts, not the {wanted} of eval_prompts: the file holds {fitted.total}{why}"
    )


def check_reward_aggregation(config, reward_path: str) -> None:
    """min and mean_minus_std combine several reward models; on one they would be its score, which is not what
    their user meant."""
    from rlhf.rm.ensemble import is_ensemble

    if config.reward_aggregation != "mean" and not is_ensemble(reward_path):
        raise ConfigError(
            f"reward_aggregation {config.reward_aggregation} combines the members of a reward-model "
            f"ensemble, and reward model {reward_path} is one model; train one with the RM stage's "
            f"ensemble_size > 1, or use reward_aggregation: mean"
        )


def check_critic_tokenizer(tokenizer, paths: dict[str, str], trust_remote_code: bool) -> None:
    """The critic reads the policy's token ids as its own, so it must tokenize as the policy does; the reward
    model need not (its input is re-tokenized from text)."""

    if paths["critic"] == paths["actor"]:
        return
    critic_tokenizer = load_tokenizer(paths["critic"], trust_remote_code=trust_remote_code)
    if not same_tokenization(tokenizer, critic_tokenizer):
        raise ConfigError(
            f"critic_model {paths['critic']} tokenizes differently from the policy "
            f"{paths['actor']} (vocabulary, special tokens or chat template); the critic reads the "
            "policy's token ids, so start it from a reward model trained on the policy's base model"
        )


def ptx_examples(config, tokenizer, stop_token_ids: Sequence[int]) -> tuple[str, str, Any]:
    """("ptx", file, Fitted token examples) of PPO-ptx, each (input ids, loss mask), fitted to ptx_max_length.

    Plain text ({"text": ...}) is a pretraining loss on every token; over the limit, `truncate` keeps its start.
    Demonstrations (prompt/completion, text or chat) are tokenized as the SFT stage trains on them
    (`demonstration_ids`: the loss on the completion and its stop token, never the prompt).
    """
    from rlhf.data.demonstrations import load_demonstrations
    from rlhf.data.records import read_records

    path, limit = config.ptx_file, config.ptx_max_length
    first = next(iter(read_records(path)))
    if not (isinstance(first.value, dict) and isinstance(first.value.get("text"), str)):
        fitted = fit_demonstrations(
            load_demonstrations(path),
            tokenizer,
            max_length=limit,
            policy=config.overlong,
            file=path,
            stop_token_ids=stop_token_ids,
            setting="ptx_max_length",
        )
        fitted.kept = [demonstration_ids(tokenizer, r["prompt"], r["completion"], stop_token_ids) for r in fitted.kept]
        return "ptx", path, fitted
    examples = []
    for raw in read_records(path):
        if not isinstance(raw.value, dict) or not isinstance(raw.value.get("text"), str):
            raise DataError("missing or not a string", file=path, record=raw.number, field="text")
        ids = tokenizer(raw.value["text"])["input_ids"]
        examples.append((raw.number, (ids, [1] * len(ids))))
    fitted = fit(
        examples,
        length=lambda example: len(example[0]),
        max_tokens=limit,
        shorten=lambda example: ((example[0][:limit], example[1][:limit]), ""),
        policy=config.overlong,
        what="texts",
        limit=f"ptx_max_length {limit}",
        file=path,
    )
    return "ptx", path, fitted


def ptx_iterator(
    config, examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int, start_batch: int
) -> Iterator | None:
    """PPO-ptx batches of `examples` from `start_batch` on (so a resumed run continues the sequence), or None when
    off."""
    if not config.ptx_coef:
        return None
    from rlhf.ppo.data import ptx_batches

    return ptx_batches(
        examples, pad_token_id, config.ptx_batch_size, config.seed + distributed.global_rank(), start_batch
    )


def gold_scorer_or_none(config):
    if not config.gold_scorer:
        return None
    from rlhf.evaluation import gold_scorer

    return gold_scorer(config.gold_scorer)
