"""RMStageConfig: every setting of stage 2 (rlhf.stages.rm): ours, the adaptation fields, the shared-prompt switch and
the Trainer's."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from rlhf.adaptation.config import AdaptationConfig
from rlhf.config import SharedPromptArguments, TrainerArguments
from rlhf.errors import ConfigError

# Methods whose saved reward model is a whole model, so that an ensemble's members can be weight-averaged into the
# critic's start (LoRA too when merged on save).
WHOLE_MODEL_METHODS = ("full", "bitfit", "probe")


@dataclass
class RMStageConfig(TrainerArguments, AdaptationConfig, SharedPromptArguments, TrainingArguments):
    """Stage 2's config: our fields, the adaptation fields (full, lora, bitfit, probe, ...), the shared-prompt switch
    and the Trainer's.

    `per_device_train_batch_size` counts rankings; each brings its K completions.
    """

    model_name_or_path: str = field(
        default="sft",
        metadata={
            "help": "Initial model: registry reference, directory or hub id (a causal LM; a new scalar head is added)."
        },
    )
    train_file: str = field(
        default="",
        metadata={
            "help": "Rankings: our JSONL ({id, prompt, completions, ranks, annotator}), "
            "TRL prompt/chosen/rejected JSONL, or a `datasets` directory."
        },
    )
    eval_file: str = field(
        default="", metadata={"help": "Held-out rankings. Empty: hold out eval_fraction of the prompts."}
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "Share of prompts held out when eval_file is empty."})
    merge_annotators: bool = field(
        default=False,
        metadata={
            "help": "Merge rankings of the same prompt and completions "
            "by several annotators into one (mean rank); default keeps each."
        },
    )
    max_length: int = field(
        default=512, metadata={"help": "Tokens per prompt + completion; longer inputs lose the start of the prompt."}
    )
    normalization_file: str = field(
        default="",
        metadata={
            "help": "prompt/completion records whose mean reward is set to 0. "
            "Empty: the SFT parent's demonstrations, else the best completions."
        },
    )
    normalization_samples: int = field(default=512, metadata={"help": "At most this many records set the offset."})
    gold_scorer: str = field(default="", metadata={"help": "Name of a gold scorer ('demo') to measure agreement with."})
    output_dir: str = field(default="runs/rm", metadata={"help": "Checkpoints, metrics and the resolved config."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: batches carry ranks, not model inputs."}
    )
    label_names: list[str] = field(
        default_factory=lambda: ["ranks"], metadata={"help": "The batch key holding labels."}
    )
    ensemble_size: int = field(
        default=1,
        metadata={
            "help": "Reward models trained, k (Coste et al. 2023): each a "
            "whole training from the same start with seed + i (its "
            "head's initialisation and its data order), saved "
            "together as one registry entry whose PPO reward "
            "aggregates them (reward_aggregation). Costs k trainings."
        },
    )

    def __post_init__(self):
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(
                "eval_fraction must be at least 0 and below 1 (a share of the prompts held out), "
                f"got {self.eval_fraction}"
            )
        super().__post_init__()
        if self.ensemble_size < 1:
            raise ConfigError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        merged_lora = self.adaptation_method == "lora" and self.merge_lora_on_save
        if self.ensemble_size > 1 and not (self.adaptation_method in WHOLE_MODEL_METHODS or merged_lora):
            raise ConfigError(
                f"ensemble_size > 1 averages its members' weights into the critic's start, which needs "
                f"whole saved models: adaptation_method {', '.join(WHOLE_MODEL_METHODS)}, or lora with "
                f"merge_lora_on_save; got {self.adaptation_method}"
            )
