"""Stage 2: a reward model trained on K-way human rankings (InstructGPT §3.5, "RM").

    python -m rlhf.stages.rm --config configs/rm.yaml [--learning_rate 1e-5 ...]
    deepspeed --num_gpus 2 --module rlhf.stages.rm --config configs/rm.yaml --deepspeed deepspeed_configs/zero3.json

Labelers rank K responses to a prompt; every pair in a ranking teaches the model, but one ranking
is one batch element and each completion goes through the model once (rlhf.rm.loss.kway_ranking_loss).
After training the reward gets a bias so that the demonstrations score 0 on average, saved with the
model so that PPO and every evaluation see the same scale. With `ensemble_size` k, k models are trained so,
seeds seed..seed+k-1, and saved and registered as one ensemble (rlhf.rm.ensemble; Coste et al. 2023).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
from pathlib import Path

from rlhf import distributed, run_files
from rlhf.errors import exits_cleanly
from rlhf.generation import stop_token_ids_of
from rlhf.io import atomic_write_json, atomic_write_text
from rlhf.rm.config import RMStageConfig
from rlhf.stages import epilogue, prologue
from rlhf.stages.prologue import STAGE_INTERRUPTED, run_from_command_line


def run(config: RMStageConfig):
    """Train, normalise, evaluate, save and register. Returns the registry entry (None off rank 0)."""
    from rlhf.rm import evaluation
    from rlhf.rm.batches import tokenize_rankings
    from rlhf.rm.data import load_ranking_splits
    from rlhf.rm.model import keep_stop_tokens, normalise

    # 1. Inputs: the starting model by reference, the rankings fitted to max_length before any training starts,
    #    each completion read as the policy writes it (so that PPO's scores read the same tokens).
    inputs = prologue.resolve_inputs(config)
    stops = stop_token_ids_of(inputs.model_path, inputs.tokenizer)
    train_rankings, eval_rankings, splits = load_ranking_splits(config, inputs.tokenizer, stops)
    overlong = prologue.report_overlong(config.output_dir, splits)
    train_features = tokenize_rankings(train_rankings, inputs.tokenizer, stops)
    eval_features = tokenize_rankings(eval_rankings, inputs.tokenizer, stops)
    metrics = {
        "train_rankings": len(train_rankings),
        "eval_rankings": len(eval_rankings),
        "ensemble_size": config.ensemble_size,
        **overlong,
    }
    if config.ensemble_size > 1:
        return run_ensemble(
            config, inputs, stops, train_features, eval_features, train_rankings, eval_rankings, metrics
        )

    # 2-3. A scalar-head model on the SFT body, trained on the K-way ranking loss (`train_one`).
    trained = train_one(config, inputs, train_features, eval_features)
    if trained is None:  # SIGTERM: a checkpoint is saved, --resume continues
        return None
    trainer, trained_metrics = trained
    metrics.update(trained_metrics)

    # 4. Save, set the reward's zero at the demonstrations' mean, measure on held-out rankings, register.
    def normalise_and_evaluate(saved_dir):
        keep_stop_tokens(inputs.model_path, saved_dir)
        normalization = normalise(saved_dir, config, inputs, train_rankings, stops)
        return {
            "reward_offset": normalization.offset,
            **evaluation.evaluate(saved_dir, config, inputs.tokenizer, eval_rankings),
        }

    return epilogue.save_and_register(
        trainer,
        config,
        inputs,
        metrics,
        stage="rm",
        data_files=[config.train_file],
        gold_prompts=[],
        task="reward",
        after_save=normalise_and_evaluate,
    )


def train_one(config: RMStageConfig, inputs, train_features, eval_features):
    """(trainer, metrics) of one reward model trained with `config` (its seed draws the new head's weights and the
    data order); None when SIGTERM stopped it (after saving a checkpoint)."""
    from rlhf.rm.batches import RankingCollator
    from rlhf.rm.trainer import RankingTrainer, compute_ranking_metrics
    from rlhf.stages import epilogue, prologue, trainer_run

    # A scalar-head model on the SFT body, adapted so that only the chosen parameters train.
    model = prologue.load_trainable(inputs, config, task="reward")
    metrics = prologue.parameter_counts(model)
    # The K-way ranking loss with the Trainer; held-out ranking metrics as it goes.
    trainer = RankingTrainer(
        model=model,
        args=config,
        train_dataset=train_features,
        eval_dataset=eval_features or None,
        data_collator=RankingCollator(inputs.tokenizer.pad_token_id),
        compute_metrics=compute_ranking_metrics,
        shared_prompt_forward=config.shared_prompt_forward,
    )
    config.eval_on_start = bool(eval_features)  # the "before" numbers
    result = trainer_run.train(trainer, config)
    if result is None:
        return None
    before = epilogue.metrics_before_training(trainer)
    if before:
        metrics["eval_pairwise_accuracy_before"] = before["eval_pairwise_accuracy"]
        metrics["eval_loss_before"] = before["eval_loss"]
    metrics["train_loss"] = result.training_loss
    metrics["shared_prompt_forward"] = trainer.shared_prompt is not None and trainer.shared_prompt.enabled
    metrics["train_runtime_s"] = result.metrics.get("train_runtime")
    return trainer, metrics


def run_ensemble(
    config: RMStageConfig, inputs, stops, train_features, eval_features, train_rankings, eval_rankings, metrics: dict
):
    """k reward models (`ensemble_size`), each trained as `train_one` trains one with seed + i, so that their new
    heads and data orders differ; saved as one directory (rlhf.rm.ensemble) and registered as one entry."""
    from rlhf.rm import ensemble, evaluation
    from rlhf.rm.model import keep_stop_tokens, normalise

    # 2-3. Each member in its own output directory (its checkpoints: --resume continues the member it stopped in,
    #      and a member already saved is not trained again).
    members = [
        member_run(config, index, inputs, train_features, eval_features) for index in range(config.ensemble_size)
    ]
    if any(member is None for member in members):
        return None
    metrics.update(ensemble_training_metrics([member_metrics for _, member_metrics, _ in members]))
    history = [{"member": index, **row} for index, (_, _, rows) in enumerate(members) for row in rows]

    # 4. The members and their weight average (the critic's start) in one directory; each with its own zero at
    #    the demonstrations' mean; the ensemble measured on held-out rankings by its members' mean; registered.
    def assemble_normalise_evaluate(final_dir):
        for saved, _, _ in members:
            keep_stop_tokens(inputs.model_path, saved)
        ensemble.assemble(
            [saved for saved, _, _ in members],
            final_dir,
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
        )
        offsets = [
            normalise(member, config, inputs, train_rankings, stops).offset
            for member in ensemble.member_dirs(final_dir)
        ]
        averaged = normalise(final_dir, config, inputs, train_rankings, stops)
        return {
            "reward_offset": averaged.offset,
            "member_reward_offsets": offsets,
            **evaluation.evaluate(final_dir, config, inputs.tokenizer, eval_rankings),
        }

    final_dir = Path(config.output_dir) / run_files.FINAL_MODEL
    return epilogue.register_on_main(
        config,
        inputs,
        final_dir,
        metrics,
        stage="rm",
        data_files=[config.train_file],
        log_history=history,
        task="reward",
        after_save=assemble_normalise_evaluate,
    )


def member_run(config: RMStageConfig, index: int, inputs, train_features, eval_features):
    """(saved model directory, metrics, log rows) of member `index`, trained in output_dir/member-<index> with seed
    + index, or read back from there when a resumed run had saved it; None when SIGTERM stopped it."""

    from transformers.integrations import is_deepspeed_zero3_enabled

    member_config = dataclasses.replace(
        config, seed=config.seed + index, output_dir=str(Path(config.output_dir) / f"member-{index}")
    )
    out = Path(member_config.output_dir)
    saved = out / run_files.FINAL_MODEL
    if config.resume and (out / run_files.METRICS).is_file() and saved.is_dir():
        return (
            saved,
            json.loads((out / run_files.METRICS).read_text()),
            run_files.read_jsonl(out / run_files.LOG_HISTORY),
        )
    if distributed.is_main_process():
        print(f"ensemble member {index + 1} of {config.ensemble_size} (seed {member_config.seed})", flush=True)
    trained = train_one(member_config, inputs, train_features, eval_features)
    if trained is None:
        return None
    trainer, metrics = trained
    epilogue.save_final_model(
        trainer.model,
        inputs.tokenizer,
        saved,
        member_config,
        zero3=is_deepspeed_zero3_enabled(),
        engine=trainer.model_wrapped,
    )
    rows = list(trainer.state.log_history)
    if distributed.is_main_process():  # the metrics last: their file marks the member as saved whole
        atomic_write_text(out / run_files.LOG_HISTORY, "".join(json.dumps(row) + "\n" for row in rows))
        atomic_write_json(out / run_files.METRICS, metrics)
    distributed.barrier()
    del trainer
    gc.collect()
    return saved, metrics, rows


def ensemble_training_metrics(members: list[dict]) -> dict:
    """The ensemble's training metrics from its members': parameters and time summed (its cost), losses and
    before-training numbers averaged, and each member's train loss and time."""

    def mean(key):
        values = [member[key] for member in members if isinstance(member.get(key), (int, float))]
        return sum(values) / len(values) if values else None

    metrics = {
        "trainable_params": sum(m["trainable_params"] for m in members),
        "total_params": sum(m["total_params"] for m in members),
        "train_loss": mean("train_loss"),
        "member_train_loss": [m.get("train_loss") for m in members],
        "train_runtime_s": sum(m.get("train_runtime_s") or 0.0 for m in members),
        "member_train_runtime_s": [m.get("train_runtime_s") for m in members],
        "shared_prompt_forward": all(m.get("shared_prompt_forward") for m in members),
    }
    for key in ("eval_pairwise_accuracy_before", "eval_loss_before"):
        if mean(key) is not None:
            metrics[key] = mean(key)
    return metrics


@exits_cleanly(on_interrupt=STAGE_INTERRUPTED)
def main(argv: list[str] | None = None) -> None:
    run_from_command_line(RMStageConfig, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
