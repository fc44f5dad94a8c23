"""Stage 1: supervised fine-tuning on human demonstrations (InstructGPT §3.5, "SFT").

    python -m rlhf.stages.sft --config configs/sft.yaml [--learning_rate 3e-5 ...]
    deepspeed --num_gpus 2 --module rlhf.stages.sft --config configs/sft.yaml --deepspeed deepspeed_configs/zero3.json

The loop is TRL's SFTTrainer (DeepSpeed through its `deepspeed=` argument); this file adds what
it lacks: inputs named through the registry, data errors that name the record, adaptation
methods beyond peft's, gold-score evaluation before and after, and registration of the result.
"""

from __future__ import annotations

import sys

from rlhf.errors import exits_cleanly
from rlhf.generation import stop_token_ids_of
from rlhf.sft.config import SFTStageConfig
from rlhf.sft.prefix_tuning import prefix_tuning_trainer_class
from rlhf.stages.prologue import STAGE_INTERRUPTED, run_from_command_line


def run(config: SFTStageConfig):
    """Train, evaluate, save and register. Returns the registry entry (None off rank 0)."""
    from trl import SFTTrainer

    from rlhf.sft.data import load_demonstration_splits, tokenized
    from rlhf.sft.packing import keep_packed_rows
    from rlhf.stages import epilogue, prologue, trainer_run

    # 1. Inputs: the model by reference, the demonstrations fitted to max_length before any training starts.
    inputs = prologue.resolve_inputs(config)
    tokenizer = inputs.tokenizer
    stops = stop_token_ids_of(inputs.model_path, tokenizer)
    splits = load_demonstration_splits(config, tokenizer, stops)
    train_records = splits[0][2].kept
    eval_records = splits[1][2].kept if len(splits) > 1 else []
    overlong = prologue.report_overlong(config.output_dir, splits)

    # 2. The model, adapted so that only the chosen parameters train.
    model = prologue.load_trainable(inputs, config, task="causal_lm")
    metrics = {**prologue.parameter_counts(model), **overlong}

    # 3. Gold score of the starting policy on held-out prompts (the demo's stand-in for people).
    gold_prompts = [r["prompt"] for r in eval_records[: config.gold_eval_prompts]]
    metrics.update(prologue.gold_metrics_of_start(model, inputs, gold_prompts, config))

    # 4. Train with TRL's SFTTrainer; held-out loss before (at step 0) and after.
    config.eval_on_start = bool(eval_records)
    trainer_class = SFTTrainer
    if config.adaptation_method == "prefix_tuning":
        trainer_class = prefix_tuning_trainer_class()
        config.activation_checkpointing = False  # recomputation drops the prefix's key/value cache
    if config.completion_only_loss is None:
        config.completion_only_loss = True  # TRL's default for prompt/completion data, which it sees tokenized
    trainer = trainer_class(
        model=model,
        args=config,
        processing_class=tokenizer,
        train_dataset=tokenized(train_records, tokenizer, stops),
        eval_dataset=tokenized(eval_records, tokenizer, stops) if eval_records else None,
    )
    keep_packed_rows(trainer)  # without flash attention, a flattened packed batch costs (batch x length)^2
    result = trainer_run.train(trainer, config)
    if result is None:  # SIGTERM: a checkpoint is saved, --resume continues
        return None
    before = epilogue.metrics_before_training(trainer)
    if "eval_loss" in before:
        metrics["eval_loss_before"] = before["eval_loss"]
    metrics["train_loss"] = result.training_loss
    metrics["train_runtime_s"] = result.metrics.get("train_runtime")
    if eval_records:
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]

    # 5. Save in Hugging Face format, grade the saved policy, register it.
    return epilogue.save_and_register(
        trainer, config, inputs, metrics, stage="sft", data_files=[config.train_file], gold_prompts=gold_prompts
    )


@exits_cleanly(on_interrupt=STAGE_INTERRUPTED)
def main(argv: list[str] | None = None) -> None:
    run_from_command_line(SFTStageConfig, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
