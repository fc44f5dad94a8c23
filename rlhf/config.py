"""Config: one dataclass per stage, filled from YAML and overridden on the command line.

    python -m rlhf.stages.sft --config configs/sft.yaml --learning_rate 3e-5

YAML values are turned into command-line arguments and put before the user's, so that the same
`HfArgumentParser` types both (a string where a float belongs is an error naming the key) and the
command line wins. Fields shared by every stage live once, in `CommonArguments`; the shared-prompt switch
of the RM and PPO stages in `SharedPromptArguments`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhf import _compat
from rlhf.attention import DEFAULT_ATTENTION, check_attention
from rlhf.data.overlong import OVERLONG_HELP
from rlhf.data.overlong import POLICIES as OVERLONG_POLICIES
from rlhf.errors import ConfigError
from rlhf.io import atomic_write_text
from rlhf.run_files import RESOLVED_CONFIG

T = TypeVar("T")


@dataclass
class CommonArguments:
    """Fields every stage shares. Declared once here; each stage's config inherits them."""

    model_name_or_path: str = field(
        default="",
        metadata={
            "help": "The model to start from: a registry reference (`sft`, `sft@2`), a local "
            "Hugging Face directory, or a hub id; resolved in that order."
        },
    )
    registry_dir: str = field(
        default="",
        metadata={"help": "Root of the model registry. Empty: $RLHF_REGISTRY, else runs/registry."},
    )
    register_as: str = field(
        default="",
        metadata={"help": "Registry name for this run's model. Empty: the stage's own name (sft, rm, ppo)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model code shipped with a hub model. Off unless you trust its author."},
    )
    attn_implementation: str = field(
        default=DEFAULT_ATTENTION,
        metadata={
            "help": "Attention every model of the stage runs: sdpa, eager, or flash_attention_2 (needs the "
            "flash-attn package, a GPU and bf16)."
        },
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the latest checkpoint in output_dir (a fresh start if there is none)."},
    )
    overlong: str = field(default="drop", metadata={"help": OVERLONG_HELP})

    def __post_init__(self):
        """Values that would fail only deep inside training, or after it (registration), refused at once."""
        check_attention(self.attn_implementation)
        if self.overlong not in OVERLONG_POLICIES:
            raise ConfigError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got '{self.overlong}'")
        check_numbers(self)
        if self.register_as:
            from rlhf.registry import check_name

            try:
                check_name(self.register_as)
            except ConfigError as error:
                raise ConfigError(f"register_as: {error}") from None
        # Stage configs combine this with other dataclasses: let the next class in the MRO check its fields too.
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


@dataclass
class TrainerArguments(CommonArguments):
    """CommonArguments of the stages that train with transformers' Trainer (SFT, RM), whose configs also extend
    its TrainingArguments: what those fields need before TrainingArguments checks them itself."""

    def __post_init__(self):
        _check_trainer_settings(self)
        # TRL turns bf16 on whenever it is unset, which fails on a CPU; unset means "where supported".
        if self.bf16 is None:
            self.bf16 = bf16_supported() and not self.fp16
        # transformers 5 renamed gradient_checkpointing to activation_checkpointing and warns on every run that
        # still carries the old field (TRL's SFTConfig sets it): take its value over without the warning.
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if hasattr(self, new) and getattr(self, new) is None and getattr(self, old, None) is not None:
                setattr(self, new, getattr(self, old))
        if self.dataloader_pin_memory and not _cuda_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; on a CPU it only warns
        super().__post_init__()
        _check_deepspeed_agrees(self)


@dataclass
class SharedPromptArguments:
    """The switch of the stages that run several responses to one prompt (RM: a ranking's completions; PPO: a
    prompt's samples). Declared once here; RM and PPO configs inherit it."""

    shared_prompt_forward: bool = field(
        default=True,
        metadata={
            "help": "Run the responses to one prompt in one row behind one copy of the prompt, each seeing the "
            "prompt and itself at its own positions: the prompt is computed once, with the same outputs, "
            "losses and gradients to float tolerance. A model that fails a check at start (flash "
            "attention, attention that ignores a custom mask) runs one sequence per response, with a "
            "line saying so."
        },
    )


def _check_trainer_settings(config) -> None:
    """TrainingArguments values that would fail only once training starts, refused at once."""
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(config, key)
        if isinstance(value, int) and value <= 0:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    save_steps = config.save_steps
    if str(config.save_strategy).endswith("steps") and isinstance(save_steps, (int, float)) and save_steps < 0:
        raise ConfigError(
            f"save_steps must be > 0 (steps between checkpoints, or a fraction of the run), got {save_steps}"
        )
    epochs = config.num_train_epochs
    if isinstance(epochs, (int, float)) and epochs <= 0 and config.max_steps <= 0:
        raise ConfigError(f"num_train_epochs must be > 0 (or max_steps set), got {epochs}")
    deepspeed_file = config.deepspeed
    if isinstance(deepspeed_file, str) and (deepspeed_file.endswith(".json") or Path(deepspeed_file).is_file()):
        load_deepspeed_config(deepspeed_file)  # transformers' own error does not name the file


AT_LEAST_0 = (lambda value: value >= 0, "must be >= 0")
ABOVE_0 = (lambda value: value > 0, "must be > 0")
FRACTION = (lambda value: 0 <= value < 1, "must be at least 0 and below 1")
ZERO_TO_ONE = (lambda value: 0 <= value <= 1, "must be between 0 and 1")
# The float settings of every stage (and the pipeline) whose wrong values fail only once a model has loaded, or
# train without saying so. A learning rate of 0 freezes what it drives, which is allowed.
FLOAT_RANGES = {
    "learning_rate": AT_LEAST_0,
    "actor_learning_rate": AT_LEAST_0,
    "critic_learning_rate": AT_LEAST_0,
    "weight_decay": AT_LEAST_0,
    "adam_beta1": FRACTION,
    "adam_beta2": FRACTION,
    "adam_epsilon": AT_LEAST_0,
    "max_grad_norm": AT_LEAST_0,
    "warmup_steps": AT_LEAST_0,
    "label_smoothing_factor": FRACTION,
    "neftune_noise_alpha": AT_LEAST_0,
    "lora_alpha": ABOVE_0,
    "lora_dropout": FRACTION,
    "gamma": ZERO_TO_ONE,
    "lam": ZERO_TO_ONE,
    "cliprange": ABOVE_0,
    "cliprange_value": ABOVE_0,
    "vf_coef": ABOVE_0,  # the critic's clipping norm is max_grad_norm / vf_coef
    "target_kl": ABOVE_0,
    "score_clip": AT_LEAST_0,
    "ptx_coef": AT_LEAST_0,
    "demo_scale": ABOVE_0,
    "uncertainty_coef": AT_LEAST_0,
}


def check_numbers(config) -> None:
    """Every float setting of `config` is finite (`--learning_rate nan` would train NaN weights, `inf` epochs
    forever), and those of FLOAT_RANGES are in their range; one line naming the key otherwise."""
    for setting in dataclasses.fields(config):
        value = getattr(config, setting.name, None)
        if not isinstance(value, float):
            continue
        if not math.isfinite(value):
            raise ConfigError(f"{setting.name} must be a finite number, got {value}")
        in_range, requirement = FLOAT_RANGES.get(setting.name, (None, ""))
        if in_range is not None and not in_range(value):
            raise ConfigError(f"{setting.name} {requirement}, got {value}")


def load_deepspeed_config(path: str) -> dict[str, Any]:
    """A DeepSpeed JSON file's mapping; one line naming the file when it is missing or not JSON."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: DeepSpeed config file not found")
    try:
        value = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return value


def is_zero3(ds_config: dict[str, Any]) -> bool:
    """Whether a DeepSpeed config's mapping shards parameters (ZeRO stage 3)."""
    return (ds_config.get("zero_optimization") or {}).get("stage", 0) == 3


def _check_deepspeed_agrees(config) -> None:
    """The Trainer stages' DeepSpeed values that contradict their own settings (batch sizes, learning rate...):
    transformers finds them when the arguments are made but raises only once the model is loaded."""
    # TrainingArguments sets hf_deepspeed_config only when a DeepSpeed config is given.
    mismatches = getattr(getattr(config, "hf_deepspeed_config", None), "mismatches", None)
    if mismatches:
        found = "; ".join(line.lstrip("- ") for line in mismatches)
        raise ConfigError(
            f"{config.deepspeed if isinstance(config.deepspeed, str) else 'deepspeed'}: contradicts "
            f'the stage\'s settings ({found}); set those DeepSpeed values to "auto" or make them agree'
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.isbf16_supported()


class _RaisingParser:
    """Mixin that turns argparse's print-usage-and-exit into a ConfigError (one line, named key)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook name
        raise ConfigError(f"bad argument: {message}")


def _parser_for(config_class: type):
    from transformers import HfArgumentParser

    class Parser(_RaisingParser, HfArgumentParser):
        pass

    # No abbreviations: a typo such as --learning_rat must be an error, not silently --learning_rate.
    parser = Parser(config_class, allow_abbrev=False)
    # HfArgumentParser reads a `str | bool` field as a bool, so that, for example,
    # `--include_num_input_tokens_seen non_padding` (a value TrainingArguments documents) would be refused.
    hints = typing.get_type_hints(config_class)
    for action in _compat.parser_actions(parser):
        if {str, bool} <= set(typing.get_args(hints.get(action.dest))):
            action.type = bool_or_word
    return parser


def bool_or_word(value: str) -> bool | str:
    """The value of a `str | bool` field: yes/no words are booleans, any other word stays a string."""
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    return value


def settings_to_argv(settings: dict[str, Any]) -> list[str]:
    """`--key value` arguments for a mapping of config keys, as every stage's parser reads them.

    The one place settings become a command line (YAML files, pipeline overrides, tests, benchmarks). None and
    empty lists or mappings leave the field at its default, as they do in a YAML file; booleans are written
    `true`/`false`, lists as one argument per item, mappings as JSON.
    """
    argv: list[str] = []
    for key, value in settings.items():
        if value is None or (isinstance(value, (list, tuple, dict)) and not value):
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(item) for item in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def yaml_to_argv(settings: dict[str, Any], known_keys: set[str], source: str) -> list[str]:
    """Turn a YAML mapping into `--key value` arguments; an unknown key is an error naming it and the file."""
    for key in settings:
        if key not in known_keys:
            raise ConfigError(f"{source}: unknown key '{key}'")
    return settings_to_argv(settings)


class AliasRefused(yaml.YAMLError):
    """A YAML alias (*name) in a config."""


class _LoaderWithoutAliases(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing aliases: a 500-byte file of nine nested levels of them stands for
    gigabytes once its values are written out (the "billion laughs"), and no config needs one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            alias = self.peek_event()
            raise AliasRefused(
                f"line {alias.start_mark.line + 1}: YAML aliases (*{alias.anchor}) are refused in "
                f"configs, since a few nested ones expand without bound; write the value out"
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """The value of YAML `text`, aliases refused; a one-line ConfigError naming `source` (a file, a key) when it
    is not YAML or holds an alias. Every YAML the user gives us is read here."""
    try:
        return yaml.load(text, Loader=_LoaderWithoutAliases)  # noqa: S506 - a SafeLoader
    except AliasRefused as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(error).split())})") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    settings = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of config keys")
    return settings


def parse_config(config_class: type[T], argv: Sequence[str] | None = None) -> T:
    """Build `config_class` from `--config FILE.yaml` (optional) plus command-line overrides."""
    _compat.let_accelerate_see_cpu_ranks()  # before TrainingArguments sets up the process group
    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_argv: list[str] = []
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        config_path = argv[at + 1]
        del argv[at : at + 2]
        known = {f.name for f in dataclasses.fields(config_class)}
        yaml_argv = yaml_to_argv(load_yaml(config_path), known, config_path)
    parser = _parser_for(config_class)
    try:
        config, unknown = parser.parse_args_into_dataclasses(args=yaml_argv + argv, return_remaining_strings=True)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        # Dataclass __post_init__ checks (TrainingArguments has many) are user errors too.
        raise ConfigError(" ".join(str(error).split())) from None
    if unknown:
        raise ConfigError(f"unknown argument '{unknown[0]}' (not a field of {config_class.__name__})")
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of every field, for the resolved config written next to a run's outputs."""
    if hasattr(config, "to_dict"):  # TrainingArguments hides tokens and turns enums into strings
        values = config.to_dict()
    else:
        values = dataclasses.asdict(config)
    return json.loads(json.dumps(values, default=str))


def write_resolved_config(config: Any, output_dir: str | os.PathLike) -> Path:
    """Write the resolved config as YAML beside the outputs, the record of what this run used."""

    path = Path(output_dir) / RESOLVED_CONFIG
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=True))
    return path
