"""What every stage does after its algorithm: save the model, write the run's files, register it.

    save_final_model     every rank calls it (under ZeRO-3 the gather is a collective); rank 0 writes
    write_and_register   rank 0: resolved_config.yaml, metrics.json, the registry entry, registered.json
    save_and_register    the two, with the gold grading and log history of the Trainer stages (SFT, RM)
    register_on_main     its second half, for a model saved otherwise (an RM ensemble's members, then their whole)

The run's file names are rlhf.run_files'; the PPO stage ends through the same two functions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlhf import _compat, distributed, run_files
from rlhf.config import config_to_dict, write_resolved_config
from rlhf.io import atomic_write_json, atomic_write_text
from rlhf.registry import Entry, Registry, fingerprint_files


def save_final_model(module, tokenizer, final_dir: Path, adaptation, *, zero3: bool, engine=None) -> None:
    """`module` in Hugging Face format at `final_dir` (LoRA merged when configured). Every rank must call it.

    Under ZeRO-3 no rank gathers the whole model: one module at a time is gathered and rank 0 streams it to
    safetensors shards (rlhf.adaptation.partitioned_save).
    """
    from rlhf.adaptation.checkpoint import save_adapted

    if not zero3:
        if distributed.is_main_process():
            save_adapted(module, tokenizer, final_dir, adaptation)
        distributed.barrier()
        return
    from rlhf.adaptation.partitioned_save import save_adapted_partitioned

    if engine is not None and hasattr(engine, "empty_partition_cache"):
        # The last forward's prefetches can leave parameters "in flight"; settle them before gathering.
        engine.empty_partition_cache()
    save_adapted_partitioned(module, tokenizer, final_dir, adaptation)


def write_and_register(
    config,
    registry: Registry,
    final_dir: Path,
    *,
    stage: str,
    metrics: dict[str, Any],
    base_model: str,
    parents: Iterable[str],
    data_files: list[str],
) -> Entry:
    """Write the run's record beside its outputs and register `final_dir` (rank 0 only)."""
    output_dir = Path(config.output_dir)
    write_resolved_config(config, output_dir)
    atomic_write_json(output_dir / run_files.METRICS, metrics)
    name, run_id = config.register_as or stage, uuid.uuid4().hex
    atomic_write_json(output_dir / run_files.REGISTERING, {"name": name, "run_id": run_id})
    entry = registry.register(
        name,
        stage,
        final_dir,
        base_model=base_model,
        parents=list(parents),
        data_fingerprint=fingerprint_files(data_files),
        config=config_to_dict(config),
        metrics=metrics,
        run_id=run_id,
    )
    atomic_write_json(output_dir / run_files.REGISTERED, {"reference": entry.reference, "path": entry.path})
    return entry


def metrics_before_training(trainer) -> dict[str, Any]:
    """The metrics of the evaluation the Trainer ran before its first step (`eval_on_start`).

    Evaluating through the Trainer before `train()` would wrap the model in an inference-only DeepSpeed
    engine that training then cannot use; evaluating at step 0 inside `train()` measures the same thing.
    """
    for row in trainer.state.log_history:
        if any(key.startswith("eval_") for key in row) and row.get("step", 0) == 0:
            return row
    return {}


def save_and_register(
    trainer,
    config,
    inputs,
    metrics: dict[str, Any],
    *,
    stage: str,
    data_files: list[str],
    gold_prompts: list,
    task: str = "causal_lm",
    after_save: Callable[[Path], dict[str, Any]] | None = None,
) -> Entry | None:
    """A Trainer stage's end: save the trained model, grade it, write the run's files and register it.

    `after_save(saved_dir)` runs on rank 0 before registration and returns more metrics (the reward
    model sets its normalisation there). Returns the entry on rank 0, None elsewhere.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    final_dir = Path(config.output_dir) / run_files.FINAL_MODEL
    save_final_model(
        trainer.model,
        inputs.tokenizer,
        final_dir,
        config,
        zero3=is_deepspeed_zero3_enabled(),
        engine=trainer.model_wrapped,
    )
    return register_on_main(
        config,
        inputs,
        final_dir,
        metrics,
        stage=stage,
        data_files=data_files,
        log_history=trainer.state.log_history,
        gold_prompts=gold_prompts,
        task=task,
        after_save=after_save,
    )


def register_on_main(
    config,
    inputs,
    final_dir: Path,
    metrics: dict[str, Any],
    *,
    stage: str,
    data_files: list[str],
    log_history: list[dict],
    gold_prompts: list = (),
    task: str = "causal_lm",
    after_save: Callable[[Path], dict[str, Any]] | None = None,
) -> Entry | None:
    """What follows the save of a Trainer stage's model at `final_dir` (every rank calls it; rank 0 works): grade
    it, `after_save`, write the run's files (the Trainer's `log_history` among them) and register it."""

    if not distributed.is_main_process():
        return None
    # From here rank 0 works alone: models it loads must be whole, not ZeRO-3 partitions that would wait
    # for the other ranks.
    with _compat.zero3_init_disabled():
        metrics.update(_graded(config, inputs, final_dir, list(gold_prompts), task))
        if after_save is not None:
            metrics.update(after_save(final_dir))
        _write_trainer_records(log_history, config, metrics)
        return write_and_register(
            config,
            inputs.registry,
            final_dir,
            stage=stage,
            metrics=metrics,
            base_model=(inputs.parent.base_model if inputs.parent else "") or inputs.model_path,
            parents=[inputs.parent.reference] if inputs.parent else [],
            data_files=data_files,
        )


def _graded(config, inputs, final_dir: Path, gold_prompts: list, task: str) -> dict[str, Any]:
    from rlhf.adaptation.checkpoint import load_adapted

    if not (gold_prompts and config.gold_scorer):
        return {}
    from rlhf.evaluation import gold_metrics

    saved = load_adapted(
        str(final_dir),
        task=task,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
    )
    return gold_metrics(saved, inputs.tokenizer, gold_prompts, config, suffix="after")


def _write_trainer_records(log_history: list[dict], config, metrics: dict[str, Any]) -> None:
    """gold_samples.json (taken out of the metrics) and log_history.jsonl."""
    output_dir = Path(config.output_dir)
    samples = {key: metrics.pop(key) for key in list(metrics) if key.startswith("gold_samples_")}
    if samples:
        atomic_write_json(output_dir / run_files.GOLD_SAMPLES, samples)
    history = "".join(json.dumps(row) + "\n" for row in log_history)
    atomic_write_text(output_dir / run_files.LOG_HISTORY, history)
