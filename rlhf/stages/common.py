"""What every stage does around its algorithm: resolve inputs, save, grade, register.

Kept apart so that each stage file reads as its algorithm and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlhf import distributed
from rlhf.config import config_to_dict, write_resolved_config
from rlhf.io import atomic_write_json, atomic_write_text
from rlhf.registry import Entry, Registry, fingerprint_files

logger = logging.getLogger("rlhf")


@dataclass
class StageInputs:
    model_path: str  # a directory, or a hub id
    parent: Entry | None  # the registry entry the model came from, if it did
    registry: Registry
    tokenizer: Any


def resolve_inputs(config) -> StageInputs:
    from rlhf.models import load_tokenizer

    registry = Registry(config.registry_dir or None)
    from rlhf.registry import resolve_model

    model_path, parent = resolve_model(config.model_name_or_path, registry)
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
    return StageInputs(model_path, parent, registry, tokenizer)


def load_trainable(inputs: StageInputs, config, task: str):
    """The input model with the config's adaptation applied, so that only the chosen parameters train."""
    from rlhf.adaptation import apply_adaptation, load_adapted, parameter_summary

    model = load_adapted(inputs.model_path, task=task, trust_remote_code=config.trust_remote_code)
    if task == "reward" and model.config.pad_token_id is None:
        # The score is read at the last non-padding token, which needs to know the padding token.
        model.config.pad_token_id = inputs.tokenizer.pad_token_id
    model = apply_adaptation(model, config, task=task)
    if distributed.is_main_process():
        print(f"adaptation {config.adaptation_method}: {parameter_summary(model)}", flush=True)
    return model


def parameter_counts(model) -> dict[str, int]:
    from rlhf.adaptation import count_parameters

    trainable, total = count_parameters(model)
    return {"trainable_params": trainable, "total_params": total}


def gold_metrics(model, tokenizer, prompts: list, config, suffix: str) -> dict[str, Any]:
    """{'gold_score_<suffix>': mean} on rank 0 when the config names a gold scorer, else {}."""
    if not config.gold_scorer or not prompts or not distributed.is_main_process():
        return {}
    from rlhf.evaluation import gold_evaluation, gold_scorer

    result = gold_evaluation(model, tokenizer, prompts, gold_scorer(config.gold_scorer),
                             max_new_tokens=config.gold_max_new_tokens)
    return {f"gold_score_{suffix}": result["gold_score"], f"gold_samples_{suffix}": result["samples"]}


def first_evaluation(trainer) -> dict[str, Any]:
    """The metrics of the evaluation the Trainer ran before its first step (`eval_on_start`).

    Evaluating through the Trainer before `train()` would wrap the model in an inference-only DeepSpeed
    engine that training then cannot use; evaluating at step 0 inside `train()` measures the same thing.
    """
    for row in trainer.state.log_history:
        if any(key.startswith("eval_") for key in row) and row.get("step", 0) == 0:
            return row
    return {}


@contextlib.contextmanager
def whole_models_on_this_rank():
    """Load models whole on this rank alone, even while a ZeRO-3 run has them load as partitions."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def gold_metrics_of_start(model, inputs: StageInputs, prompts: list, config) -> dict[str, Any]:
    """The gold score of the starting policy (rank 0). Under ZeRO-3 `model` is a partition, so a whole copy is graded."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not config.gold_scorer or not prompts or not distributed.is_main_process():
        return {}
    if not is_deepspeed_zero3_enabled():
        return gold_metrics(model, inputs.tokenizer, prompts, config, suffix="before")
    from rlhf.adaptation import load_adapted

    # Loading and generating both inside: under ZeRO-3, generate() would otherwise wait for the other ranks.
    with whole_models_on_this_rank():
        whole = load_adapted(inputs.model_path, task="causal_lm", trust_remote_code=config.trust_remote_code)
        return gold_metrics(whole, inputs.tokenizer, prompts, config, suffix="before")


def resume_argument(config):
    """The Trainer's resume_from_checkpoint: a path, the latest checkpoint in output_dir, or None.

    `--resume` with no checkpoint yet is a fresh start, so that one command serves a first run and a
    re-run after a kill.
    """
    from transformers.trainer_utils import get_last_checkpoint

    value = config.resume_from_checkpoint
    if value not in (None, "", "false", "False", "true", "True"):
        return value
    if config.resume or value in ("true", "True"):
        output_dir = Path(config.output_dir)
        return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    return None


def _gathered_if_zero3(trainer):
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    model = trainer.model
    engine = trainer.model_wrapped
    if hasattr(engine, "empty_partition_cache"):
        # The last evaluation's prefetches can leave parameters "in flight"; settle them before gathering.
        engine.empty_partition_cache()

    # Every rank must enter: gathering is a collective. Only rank 0 then writes.
    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def save_and_register(trainer, config, inputs: StageInputs, metrics: dict[str, Any], *, stage: str,
                      data_files: list[str], gold_prompts: list, task: str = "causal_lm",
                      after_save: Callable[[Path], dict[str, Any]] | None = None) -> Entry | None:
    """Save the trained model, grade it, write the run's files and register it (rank 0 only).

    `after_save(saved_dir)` runs on rank 0 before registration and returns more metrics (the reward
    model sets its normalisation there).
    """
    from rlhf.adaptation import save_adapted

    output_dir = Path(config.output_dir)
    final_dir = output_dir / "final_model"
    with _gathered_if_zero3(trainer):
        if distributed.is_main_process():
            save_adapted(trainer.model, inputs.tokenizer, final_dir, config)
    distributed.barrier()
    if not distributed.is_main_process():
        return None
    # From here rank 0 works alone: models it loads must be whole, not ZeRO-3 partitions that would wait
    # for the other ranks.
    with whole_models_on_this_rank():
        return _grade_write_and_register(trainer, config, inputs, metrics, stage, data_files, gold_prompts, task,
                                         after_save, final_dir)


def _grade_write_and_register(trainer, config, inputs, metrics, stage, data_files, gold_prompts, task, after_save,
                              final_dir) -> Entry:
    from rlhf.adaptation import load_adapted

    output_dir = Path(config.output_dir)
    if gold_prompts and config.gold_scorer:
        saved = load_adapted(str(final_dir), task=task, trust_remote_code=config.trust_remote_code)
        metrics.update(gold_metrics(saved, inputs.tokenizer, gold_prompts, config, suffix="after"))
    if after_save is not None:
        metrics.update(after_save(final_dir))
    samples = {key: metrics.pop(key) for key in list(metrics) if key.startswith("gold_samples_")}

    write_resolved_config(config, output_dir)
    atomic_write_json(output_dir / "metrics.json", metrics)
    if samples:
        atomic_write_json(output_dir / "gold_samples.json", samples)
    history = "".join(json.dumps(row) + "\n" for row in trainer.state.log_history)
    atomic_write_text(output_dir / "log_history.jsonl", history)

    parent_base = inputs.parent.base_model if inputs.parent else ""
    entry = inputs.registry.register(
        config.register_as or stage, stage, final_dir,
        base_model=parent_base or inputs.model_path,
        parents=[inputs.parent.reference] if inputs.parent else [],
        data_fingerprint=fingerprint_files(data_files), config=config_to_dict(config), metrics=metrics,
    )
    atomic_write_json(output_dir / "registered.json", {"reference": entry.reference, "path": entry.path})
    return entry


def run_from_command_line(config_class: type, run: Callable[[Any], Entry | None], argv: list[str] | None) -> None:
    """What `python -m rlhf.stages.<stage>` does: config from YAML and flags, the run, the registered entry printed."""
    from rlhf.config import parse_config

    entry = run(parse_config(config_class, argv))
    if entry is not None:
        print(json.dumps({"registered": entry.reference, "path": entry.path, "metrics": entry.metrics}, indent=2))
