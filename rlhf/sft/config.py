"""SFTStageConfig: every setting of stage 1 (rlhf.stages.sft): ours, the adaptation fields and TRL's SFTConfig."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from rlhf.adaptation.config import AdaptationConfig
from rlhf.config import TrainerArguments


@dataclass
class SFTStageConfig(TrainerArguments, AdaptationConfig, SFTConfig):
    """Stage 1's config: our fields, the adaptation fields, and every field of TRL's SFTConfig.

    Instruction modeling (Shi et al. 2024: the loss on the prompt too) is `completion_only_loss: false`;
    sequence packing is `packing: true`.
    """

    train_file: str = field(default="", metadata={"help": "Demonstrations: JSONL/JSON/CSV or a `datasets` directory."})
    eval_file: str = field(default="", metadata={"help": "Held-out demonstrations, same format. Empty: no evaluation."})
    gold_scorer: str = field(
        default="",
        metadata={
            "help": "Name of a gold scorer ('demo') to grade greedy responses to held-out prompts before and after."
        },
    )
    gold_eval_prompts: int = field(default=100, metadata={"help": "How many held-out prompts the gold scorer grades."})
    gold_max_new_tokens: int = field(default=32, metadata={"help": "Length cap of those responses, in tokens."})
    output_dir: str = field(default="runs/sft", metadata={"help": "Checkpoints, metrics and the resolved config."})
