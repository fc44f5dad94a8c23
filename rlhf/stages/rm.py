"""Stage 2: a reward model trained on K-way human rankings (InstructGPT §3.5, "RM").

    python -m rlhf.stages.rm --config configs/rm.yaml [--learning_rate 1e-5 ...]
    deepspeed --num_gpus 2 --module rlhf.stages.rm --config configs/rm.yaml --deepspeed deepspeed_configs/zero3.json

Labelers rank K responses to a prompt; every pair in a ranking teaches the model, but one ranking
is one batch element and each completion goes through the model once (rlhf.losses.kway_ranking_loss).
After training the reward gets a bias so that the demonstrations score 0 on average, saved with the
model so that PPO and every evaluation see the same scale.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field

from transformers import TrainingArguments

from rlhf.adaptation.config import AdaptationConfig
from rlhf.config import CommonArguments
from rlhf.errors import exits_cleanly


@dataclass
class RMStageConfig(CommonArguments, AdaptationConfig, TrainingArguments):
    """Stage 2's config: our fields, the adaptation fields (full, lora, bitfit, probe, ...) and the Trainer's.

    `per_device_train_batch_size` counts rankings; each brings its K completions.
    """

    model_name_or_path: str = field(default="sft", metadata={"help": "Initial model: registry reference, "
                                                                      "directory or hub id (a causal LM; a new scalar head is added)."})
    train_file: str = field(default="", metadata={"help": "Rankings: our JSONL ({id, prompt, completions, ranks, annotator}), "
                                                          "TRL prompt/chosen/rejected JSONL, or a `datasets` directory."})
    eval_file: str = field(default="", metadata={"help": "Held-out rankings. Empty: hold out eval_fraction of the prompts."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out when eval_file is empty."})
    merge_annotators: bool = field(default=False, metadata={"help": "Merge rankings of the same prompt and completions "
                                                                    "by several annotators into one (mean rank); default keeps each."})
    max_length: int = field(default=512, metadata={"help": "Tokens per prompt + completion; longer inputs lose the start of the prompt."})
    normalization_file: str = field(default="", metadata={"help": "prompt/completion records whose mean reward is set to 0. "
                                                                  "Empty: the SFT parent's demonstrations, else the best completions."})
    normalization_samples: int = field(default=512, metadata={"help": "At most this many records set the offset."})
    gold_scorer: str = field(default="", metadata={"help": "Name of a gold scorer ('demo') to measure agreement with."})
    output_dir: str = field(default="runs/rm", metadata={"help": "Checkpoints, metrics and the resolved config."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: batches carry ranks, not model inputs."})
    label_names: list[str] = field(default_factory=lambda: ["ranks"], metadata={"help": "The batch key holding labels."})


def load_ranking_splits(config: RMStageConfig) -> tuple[list, list]:
    """(train, eval) rankings, duplicates merged; held out by prompt so no prompt is in both."""
    from rlhf.data.rankings import merge_annotators, merge_duplicate_completions, read_rankings
    from rlhf.errors import DataError

    def prepared(path):
        rankings = [merge_duplicate_completions(r) for r in read_rankings(path)]
        if config.merge_annotators:
            rankings, _ = merge_annotators(rankings)
        if not rankings:
            raise DataError("no rankings", file=path)
        return rankings

    train = prepared(config.train_file)
    if config.eval_file:
        return train, prepared(config.eval_file)
    prompts = sorted({json.dumps(r.prompt, sort_keys=True) for r in train})
    random.Random(config.seed).shuffle(prompts)
    held_out = set(prompts[:max(1, int(len(prompts) * config.eval_fraction))]) if config.eval_fraction > 0 else set()
    return ([r for r in train if json.dumps(r.prompt, sort_keys=True) not in held_out],
            [r for r in train if json.dumps(r.prompt, sort_keys=True) in held_out])


def run(config: RMStageConfig):
    """Train, normalise, evaluate, save and register. Returns the registry entry (None off rank 0)."""
    from rlhf.data.ranking_batches import RankingCollator, tokenize_rankings
    from rlhf.reward_trainer import RankingTrainer, compute_ranking_metrics
    from rlhf import reward_evaluation
    from rlhf.stages import common

    # 1. Inputs: the starting model by reference, the rankings checked before any training starts.
    inputs = common.resolve_inputs(config)
    train_rankings, eval_rankings = load_ranking_splits(config)
    train_features = tokenize_rankings(train_rankings, inputs.tokenizer, config.max_length, config.train_file)
    eval_features = tokenize_rankings(eval_rankings, inputs.tokenizer, config.max_length,
                                      config.eval_file or config.train_file)

    # 2. A scalar-head model on the SFT body, adapted so that only the chosen parameters train.
    model = common.load_trainable(inputs, config, task="reward")
    metrics = {**common.parameter_counts(model), "train_rankings": len(train_rankings),
               "eval_rankings": len(eval_rankings)}

    # 3. Train on the K-way ranking loss with the Trainer; held-out ranking metrics as it goes.
    trainer = RankingTrainer(
        model=model, args=config, train_dataset=train_features, eval_dataset=eval_features or None,
        data_collator=RankingCollator(inputs.tokenizer.pad_token_id), compute_metrics=compute_ranking_metrics,
    )
    config.eval_on_start = bool(eval_features)  # the "before" numbers
    result = trainer.train(resume_from_checkpoint=common.resume_argument(config))
    before = common.first_evaluation(trainer)
    if before:
        metrics["eval_pairwise_accuracy_before"] = before["eval_pairwise_accuracy"]
        metrics["eval_loss_before"] = before["eval_loss"]
    metrics["train_loss"] = result.training_loss
    metrics["train_runtime_s"] = result.metrics.get("train_runtime")

    # 4. Save, set the reward's zero at the demonstrations' mean, measure on held-out rankings, register.
    def normalise_and_evaluate(saved_dir):
        normalization = reward_evaluation.normalise(saved_dir, config, inputs, train_rankings)
        return {"reward_offset": normalization.offset,
                **reward_evaluation.evaluate(saved_dir, config, inputs.tokenizer, eval_rankings)}

    return common.save_and_register(trainer, config, inputs, metrics, stage="rm", data_files=[config.train_file],
                                    gold_prompts=[], task="reward", after_save=normalise_and_evaluate)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    from rlhf.stages.common import run_from_command_line

    run_from_command_line(RMStageConfig, run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
