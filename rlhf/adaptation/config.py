"""`AdaptationConfig`: which parameters a stage trains, and how the result is saved.

Pure: imports neither torch nor peft, so stage configs can include it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.errors import ConfigError

METHODS = ("full", "lora", "prompt_tuning", "prefix_tuning", "ia3", "adapter", "bitfit", "probe")
"""Every value `adaptation_method` accepts."""

PEFT_METHODS = ("lora", "prompt_tuning", "prefix_tuning", "ia3")
"""The methods built with peft; the others are plain parameter selection or our Houlsby adapters."""

TASKS = ("causal_lm", "reward")
"""`causal_lm`: a policy (SFT, PPO actor). `reward`: a sequence-classification model with one scalar output."""


@dataclass
class AdaptationConfig:
    """How a stage adapts its pretrained model. Each stage's config includes these fields once."""

    adaptation_method: str = field(
        default="full",
        metadata={
            "help": "Which parameters train. `full`: all. `lora`: low-rank updates of the target linear layers "
            "(Hu et al. 2021). `prompt_tuning`: learned input embeddings (Lester et al. 2021). `prefix_tuning`: "
            "learned keys and values in every layer (Li & Liang 2021). `ia3`: learned rescaling vectors (Liu et "
            "al. 2022). `adapter`: Houlsby bottleneck adapters after attention and feed-forward (Houlsby et al. "
            "2019). `bitfit`: bias terms only (Ben Zaken et al. 2021). `probe`: the reward head only (reward "
            "models only). On reward models every method also trains the scalar head, which starts untrained."
        },
    )

    lora_r: int = field(default=8, metadata={"help": "LoRA rank: the inner dimension of each low-rank update."})

    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scale numerator: each update is multiplied by lora_alpha / lora_r."}
    )

    lora_dropout: float = field(
        default=0.05, metadata={"help": "Dropout probability on the LoRA branch input, in [0, 1)."}
    )

    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": 'Modules LoRA adapts: "all-linear" (every linear layer but the output head) or a list of '
            'module names such as ["q_proj", "v_proj"].'
        },
    )

    num_virtual_tokens: int = field(
        default=20, metadata={"help": "Learned positions for prompt_tuning and prefix_tuning."}
    )

    adapter_bottleneck: int = field(
        default=64, metadata={"help": "Inner width of each Houlsby adapter (its down-projection output size)."}
    )

    merge_lora_on_save: bool = field(
        default=True,
        metadata={
            "help": "LoRA only. True: fold the update into the weights and save a plain model, which the next stage "
            "and any other tool load directly. False: save only the small adapter directory, which names its base "
            "model by path, so that path must still hold the base when it is loaded."
        },
    )

    def __post_init__(self) -> None:
        if self.adaptation_method not in METHODS:
            raise ConfigError(
                f"adaptation_method '{self.adaptation_method}' is unknown; choose one of {', '.join(METHODS)}"
            )
        _require(self.lora_r >= 1, f"lora_r must be at least 1, got {self.lora_r}")
        _require(self.lora_alpha > 0, f"lora_alpha must be positive, got {self.lora_alpha}")
        _require(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        targets = self.lora_target_modules
        _require(
            (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)),
            f'lora_target_modules must be ["all-linear"] or a non-empty list of module names, got {targets!r}',
        )
        _require(self.num_virtual_tokens >= 1, f"num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}")
        _require(self.adapter_bottleneck >= 1, f"adapter_bottleneck must be at least 1, got {self.adapter_bottleneck}")
        # Stage configs combine this with TrainingArguments: let the next class in the MRO check its fields too.
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def check_task(task: str) -> None:
    """Raise ConfigError unless `task` is one of TASKS."""
    if task not in TASKS:
        raise ConfigError(f"task '{task}' is unknown; choose one of {', '.join(TASKS)}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
