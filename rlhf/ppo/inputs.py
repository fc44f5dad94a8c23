"""What a PPO run reads: four models by reference, the prompts (checked up front), optional PPO-ptx data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from rlhf import distributed
from rlhf.errors import ConfigError, DataError
from rlhf.registry import Entry, Registry, resolve_model


@dataclass
class PPOInputs:
    paths: dict[str, str]  # actor, critic, reference, reward: a directory or hub id each
    entries: dict[str, Entry | None]  # the registry entries they came from
    registry: Registry
    tokenizer: Any  # the policy's
    prompts: list[Any]
    eval_prompts: list[Any]
    seed: int
    rollout_batch_size: int

    def lineage(self, config) -> dict[str, Any]:
        """Where the trained policy came from, for its registry entry: base model, parents, data files."""
        actor, reward = self.entries["actor"], self.entries["reward"]
        return {"base_model": (actor.base_model if actor else "") or self.paths["actor"],
                "parents": list(dict.fromkeys(e.reference for e in (actor, reward) if e is not None)),
                "data_files": [config.prompts_file] + ([config.ptx_file] if config.ptx_coef else [])}

    def prompts_for_step(self, step: int) -> list[Any]:
        from rlhf.ppo.data import prompts_for_step

        return prompts_for_step(self.prompts, step, self.rollout_batch_size, distributed.world_size(),
                                distributed.global_rank(), self.seed)


def read_inputs(config) -> PPOInputs:
    """The four models by reference (each one's config read, so that a model that cannot load is refused now),
    the policy's tokenizer, and the prompts, checked before anything loads."""
    from rlhf.adaptation import base_model_config
    from rlhf.data.prompts import check_prompt_lengths, load_prompts
    from rlhf.models import load_tokenizer

    registry = Registry(config.registry_dir or None)
    references = {"actor": config.model_name_or_path, "critic": config.critic_model,
                  "reference": config.reference_model or config.model_name_or_path, "reward": config.reward_model}
    paths, entries = {}, {}
    for role, reference in references.items():
        try:
            paths[role], entries[role] = resolve_model(reference, registry)
            base_model_config(paths[role], trust_remote_code=config.trust_remote_code)
        except ConfigError as error:
            raise ConfigError(f"{role} model: {error}") from None
    tokenizer = load_tokenizer(paths["actor"], trust_remote_code=config.trust_remote_code)
    check_critic_tokenizer(tokenizer, paths, config.trust_remote_code)
    prompts = load_prompts(config.prompts_file)
    eval_prompts = load_prompts(config.eval_prompts_file)[:config.eval_prompts] if config.eval_prompts_file else []
    for checked, path in ((prompts, config.prompts_file), (eval_prompts, config.eval_prompts_file)):
        check_prompt_lengths(checked, tokenizer, path, max_tokens=config.max_prompt_length,
                             setting="max_prompt_length")
    return PPOInputs(paths, entries, registry, tokenizer, prompts, eval_prompts, config.seed,
                     config.rollout_batch_size)


def check_critic_tokenizer(tokenizer, paths: dict[str, str], trust_remote_code: bool) -> None:
    """The critic reads the policy's token ids as its own, so it must tokenize as the policy does; the reward
    model need not (its input is re-tokenized from text)."""
    from rlhf.models import load_tokenizer, same_tokenization

    if paths["critic"] == paths["actor"]:
        return
    critic_tokenizer = load_tokenizer(paths["critic"], trust_remote_code=trust_remote_code)
    if not same_tokenization(tokenizer, critic_tokenizer):
        raise ConfigError(f"critic_model {paths['critic']} tokenizes differently from the policy "
                          f"{paths['actor']} (vocabulary, special tokens or chat template); the critic reads the "
                          "policy's token ids, so start it from a reward model trained on the policy's base model")


def ptx_iterator(config, tokenizer, start_batch: int) -> Iterator | None:
    """PPO-ptx batches from `start_batch` on (so a resumed run continues the sequence), or None when off."""
    if not config.ptx_coef:
        return None
    from rlhf.data.records import read_records
    from rlhf.data.demonstrations import load_demonstrations
    from rlhf.ppo.data import ptx_batches

    first = next(iter(read_records(config.ptx_file)))
    if isinstance(first.value, dict) and isinstance(first.value.get("text"), str):
        records = [raw.value for raw in read_records(config.ptx_file)]
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError("missing or not a string", file=config.ptx_file, record=number, field="text")
    else:
        records = load_demonstrations(config.ptx_file)
    return ptx_batches(records, tokenizer, config.ptx_batch_size, config.ptx_max_length,
                       config.seed + distributed.global_rank(), start_batch)


def gold_scorer_or_none(config):
    if not config.gold_scorer:
        return None
    from rlhf.evaluation import gold_scorer

    return gold_scorer(config.gold_scorer)
