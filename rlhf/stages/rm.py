"""Stage 2: a reward model trained on K-way human rankings (InstructGPT §3.5, "RM").

    python -m rlhf.stages.rm --config configs/rm.yaml [--learning_rate 1e-5 ...]
    deepspeed --num_gpus 2 --module rlhf.stages.rm --config configs/rm.yaml --deepspeed deepspeed_configs/zero3.json

Labelers rank K responses to a prompt; every pair in a ranking teaches the model, but one ranking
is one batch element and each completion goes through the model once (rlhf.rm.loss.kway_ranking_loss).
After training the reward gets a bias so that the demonstrations score 0 on average, saved with the
model so that PPO and every evaluation see the same scale.
"""

from __future__ import annotations

import sys

from rlhf.errors import exits_cleanly
from rlhf.rm.config import RMStageConfig
from rlhf.stages.prologue import STAGE_INTERRUPTED, run_from_command_line


def run(config: RMStageConfig):
    """Train, normalise, evaluate, save and register. Returns the registry entry (None off rank 0)."""
    from rlhf.generation import stop_token_ids_of
    from rlhf.rm import evaluation
    from rlhf.rm.batches import RankingCollator, tokenize_rankings
    from rlhf.rm.data import load_ranking_splits
    from rlhf.rm.model import keep_stop_tokens, normalise
    from rlhf.rm.trainer import RankingTrainer, compute_ranking_metrics
    from rlhf.stages import epilogue, prologue, trainer_run

    # 1. Inputs: the starting model by reference, the rankings fitted to max_length before any training starts,
    #    each completion read as the policy writes it (so that PPO's scores read the same tokens).
    inputs = prologue.resolve_inputs(config)
    stops = stop_token_ids_of(inputs.model_path, inputs.tokenizer)
    train_rankings, eval_rankings, splits = load_ranking_splits(config, inputs.tokenizer, stops)
    overlong = prologue.report_overlong(config.output_dir, splits)
    train_features = tokenize_rankings(train_rankings, inputs.tokenizer, stops)
    eval_features = tokenize_rankings(eval_rankings, inputs.tokenizer, stops)

    # 2. A scalar-head model on the SFT body, adapted so that only the chosen parameters train.
    model = prologue.load_trainable(inputs, config, task="reward")
    metrics = {**prologue.parameter_counts(model), "train_rankings": len(train_rankings),
               "eval_rankings": len(eval_rankings), **overlong}

    # 3. Train on the K-way ranking loss with the Trainer; held-out ranking metrics as it goes.
    trainer = RankingTrainer(
        model=model, args=config, train_dataset=train_features, eval_dataset=eval_features or None,
        data_collator=RankingCollator(inputs.tokenizer.pad_token_id), compute_metrics=compute_ranking_metrics,
        shared_prompt_forward=config.shared_prompt_forward,
    )
    config.eval_on_start = bool(eval_features)  # the "before" numbers
    result = trainer_run.train(trainer, config)
    if result is None:  # SIGTERM: a checkpoint is saved, --resume continues
        return None
    before = epilogue.metrics_before_training(trainer)
    if before:
        metrics["eval_pairwise_accuracy_before"] = before["eval_pairwise_accuracy"]
        metrics["eval_loss_before"] = before["eval_loss"]
    metrics["train_loss"] = result.training_loss
    metrics["shared_prompt_forward"] = trainer.shared_prompt is not None and trainer.shared_prompt.enabled
    metrics["train_runtime_s"] = result.metrics.get("train_runtime")

    # 4. Save, set the reward's zero at the demonstrations' mean, measure on held-out rankings, register.
    def normalise_and_evaluate(saved_dir):
        keep_stop_tokens(inputs.model_path, saved_dir)
        normalization = normalise(saved_dir, config, inputs, train_rankings, stops)
        return {"reward_offset": normalization.offset,
                **evaluation.evaluate(saved_dir, config, inputs.tokenizer, eval_rankings)}

    return epilogue.save_and_register(trainer, config, inputs, metrics, stage="rm", data_files=[config.train_file],
                                      gold_prompts=[], task="reward", after_save=normalise_and_evaluate)


@exits_cleanly(on_interrupt=STAGE_INTERRUPTED)
def main(argv: list[str] | None = None) -> None:
    run_from_command_line(RMStageConfig, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
