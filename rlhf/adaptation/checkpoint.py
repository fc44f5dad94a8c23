"""Save any adapted model as a Hugging Face directory, and load any such directory back through one function.

What a saved directory holds, by method:

    full, bitfit, probe        config.json + model.safetensors (a plain model)
    lora, merged               the same: the low-rank update is folded into the weights
    lora, prompt_tuning,       adapter_config.json + adapter_model.safetensors (peft's format), naming the
      prefix_tuning, ia3         base model by path or hub name
    adapter                    the base model, plus rlhf_adapters.safetensors with our Houlsby adapter weights

Every directory also gets rlhf_adaptation.json (how it was made) and the tokenizer, when one is given.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from rlhf.adaptation import houlsby
from rlhf.adaptation.apply import head_parameter_names, is_peft_model, reward_head_names, set_trainable
from rlhf.adaptation.config import PEFT_METHODS, AdaptationConfig, check_task
from rlhf.attention import DEFAULT_ATTENTION
from rlhf.bounded_json import read_small_json
from rlhf.errors import ConfigError
from rlhf.io import atomic_directory
from rlhf.models import load_model_config, load_refused, needs_remote_code, new_reward_head_explained
from rlhf.partitioned_load import streamed_zero3_loading

ADAPTATION_FILE = "rlhf_adaptation.json"
ADAPTER_WEIGHTS_FILE = "rlhf_adapters.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT_VERSION = 1


def save_adapted(model: nn.Module, tokenizer, out_dir: str | os.PathLike, config: AdaptationConfig) -> Path:
    """Save `model` (adapted by `config`) and `tokenizer` (or None) to `out_dir`, replacing it atomically.

    Leaves `model` as it was: merging LoRA for the save computes merged copies of the weights, it does not
    merge in place. Call it on one process only (rank 0).
    """
    method = config.adaptation_method
    check_model_matches(model, method)
    description = description_of(config, merged_lora=False)
    with atomic_directory(out_dir) as staging:
        if method == "lora" and config.merge_lora_on_save:
            model.get_base_model().save_pretrained(staging, state_dict=merged_lora_state_dict(model))
            description["merged_lora"] = True
        elif method in PEFT_METHODS:
            _save_peft_adapter(model, staging)
        elif method == "adapter":
            description.update(_save_with_houlsby_adapters(model, staging))
        else:
            model.save_pretrained(staging)  # transformers 5 always writes safetensors
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / ADAPTATION_FILE).write_text(json.dumps(description, indent=2) + "\n")
    return Path(out_dir)


def description_of(config: AdaptationConfig, *, merged_lora: bool) -> dict:
    """The contents of rlhf_adaptation.json, before any method adds its own fields."""
    return {
        "format_version": FORMAT_VERSION,
        "adaptation_method": config.adaptation_method,
        "merged_lora": merged_lora,
        "adaptation_config": asdict(config),
    }


def load_adapted(
    path: str | os.PathLike,
    task: str,
    torch_dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    *,
    is_trainable: bool = False,
    attn_implementation: str = DEFAULT_ATTENTION,
) -> nn.Module:
    """Load a directory written by `save_adapted` (or any Hugging Face model directory or hub name).

    task "reward" loads an AutoModelForSequenceClassification with num_labels=1 (a causal LM checkpoint gets a
    new, untrained head), "causal_lm" an AutoModelForCausalLM. Weights are read from safetensors only.
    torch_dtype None keeps the checkpoint's dtype. With is_trainable False (the default) every parameter is
    frozen and the model is in eval mode, as a reference policy or a reward model wants; with True, the
    parameters its method trains are trainable (for a plain model, all of them). attn_implementation: the
    attention the model runs (sdpa, eager, flash_attention_2; the stages' `attn_implementation` key).
    """
    check_task(task)
    path_str = os.fspath(path)
    directory = Path(path_str)
    description = _read_description(directory) if directory.is_dir() else None
    if description is not None and description["adaptation_method"] == "adapter":
        model = _load_with_houlsby_adapters(
            directory, description, task, torch_dtype, trust_remote_code, attn_implementation
        )
        if is_trainable:
            heads = reward_head_names(model) if task == "reward" else []
            set_trainable(model, list(houlsby.adapter_state_dict(model)) + head_parameter_names(model, heads))
    elif (directory / PEFT_CONFIG_FILE).is_file():
        model = _load_peft_adapter(directory, task, torch_dtype, trust_remote_code, is_trainable, attn_implementation)
    else:
        model = _load_plain(path_str, task, torch_dtype, trust_remote_code, attn_implementation)
    if not is_trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def base_model_config(path: str | os.PathLike, trust_remote_code: bool = False):
    """The transformers config of the model `load_adapted(path)` builds, read without loading any weight
    (for a peft adapter directory: its base model's). A model that needs its own code is refused here."""
    directory = Path(os.fspath(path))
    if (directory / PEFT_CONFIG_FILE).is_file():
        path = read_small_json(directory / PEFT_CONFIG_FILE)["base_model_name_or_path"]
    return load_model_config(os.fspath(path), trust_remote_code)


def merged_lora_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the base model with the active LoRA update folded in, `W + (alpha/r) B A`.

    Keys are the plain model's (peft's `.base_layer.` and `.modules_to_save.<adapter>.` levels removed, the
    LoRA factors and the head's untrained original dropped). The live model is not touched, unlike peft's
    merge_and_unload, which merges in place and strips the adapter from the model still being trained.
    """
    from peft.tuners.lora import LoraLayer

    adapter = peft_model.active_adapter
    base = peft_model.get_base_model()
    state = {}
    for key, tensor in base.state_dict().items():
        plain_key = plain_lora_key(key, adapter)
        if plain_key is not None:
            state[plain_key] = tensor
    with torch.no_grad():
        for name, module in base.named_modules():
            if not isinstance(module, LoraLayer) or module.merged:
                continue
            if adapter in module.lora_A or adapter in module.lora_embedding_A:
                weight = module.get_base_layer().weight
                state[f"{name}.weight"] = weight + module.get_delta_weight(adapter).to(weight.dtype)
    return state


def plain_lora_key(key: str, adapter: str) -> str | None:
    """The plain model's key for a key of a LoRA model's base (peft's `.base_layer.` and
    `.modules_to_save.<adapter>.` levels removed); None for the LoRA factors and the head's untrained original."""
    parts = key.split(".")
    if any(part.startswith("lora_") for part in parts) or "original_module" in parts:
        return None
    return key.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")


def _save_peft_adapter(model: nn.Module, staging: Path) -> None:
    peft_config = model.peft_config[model.active_adapter]
    base_reference = peft_config.base_model_name_or_path
    if not base_reference:
        raise ConfigError(
            f"cannot save an unmerged {peft_config.peft_type} adapter: its base model was not loaded from a "
            "directory or hub name, so nothing could load the adapter again (set merge_lora_on_save for LoRA)"
        )
    model.save_pretrained(staging, safe_serialization=True)
    if Path(base_reference).is_dir():
        # peft records the path as given; an absolute one keeps the adapter loadable from any working directory.
        config_file = staging / PEFT_CONFIG_FILE
        saved = json.loads(config_file.read_text())
        saved["base_model_name_or_path"] = str(Path(base_reference).resolve())
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _save_with_houlsby_adapters(model: nn.Module, staging: Path) -> dict:
    from safetensors.torch import save_file

    weights = {key: tensor.detach().contiguous().cpu() for key, tensor in houlsby.adapter_state_dict(model).items()}
    with houlsby.adapters_removed(model):
        model.save_pretrained(staging)
    save_file(weights, str(staging / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    return houlsby_description(model)


def houlsby_description(model: nn.Module) -> dict:
    """What rlhf_adaptation.json records of a model's Houlsby adapters, so that `load_adapted` can rebuild them."""
    wrapped = houlsby.adapted_modules(model)
    first = next(iter(wrapped.values())).adapter
    return {
        "adapted_modules": list(wrapped),
        "hidden_size": first.down.in_features,
        "adapter_bottleneck": first.down.out_features,
        "adapter_weights": ADAPTER_WEIGHTS_FILE,
    }


def _load_plain(
    name_or_path: str, task: str, torch_dtype, trust_remote_code: bool, attn_implementation: str
) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "reward":
        model_class, extra = AutoModelForSequenceClassification, {"num_labels": 1}
    else:
        model_class, extra = AutoModelForCausalLM, {}

    try:
        # Under ZeRO-3 no rank reads the whole checkpoint.
        with streamed_zero3_loading(), new_reward_head_explained() if task == "reward" else contextlib.nullcontext():
            return model_class.from_pretrained(
                name_or_path,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                attn_implementation=attn_implementation,
                **extra,
            )
    except OSError as error:  # a missing directory, hub name or safetensors file
        raise ConfigError(f"cannot load model '{name_or_path}': {error}") from error
    except ValueError as error:  # an attention the architecture does not implement, or code it would have to run
        if needs_remote_code(error):
            raise load_refused("model", name_or_path, error) from None
        if "attn" not in str(error) and "attention" not in str(error):
            raise
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"cannot load model '{name_or_path}' with attn_implementation '{attn_implementation}': {first_line}"
        ) from None


def _load_peft_adapter(
    directory: Path, task: str, torch_dtype, trust_remote_code: bool, is_trainable: bool, attn_implementation: str
) -> nn.Module:
    from peft import PeftConfig, PeftModel

    if not (directory / PEFT_WEIGHTS_FILE).is_file():
        raise ConfigError(f"{directory}: no {PEFT_WEIGHTS_FILE}; adapters are loaded from safetensors only")
    peft_config = PeftConfig.from_pretrained(str(directory))
    expected = "SEQ_CLS" if task == "reward" else "CAUSAL_LM"
    if peft_config.task_type != expected:
        raise ConfigError(f"{directory}: the adapter was trained for {peft_config.task_type}, not task '{task}'")
    base = _load_plain(peft_config.base_model_name_or_path, task, torch_dtype, trust_remote_code, attn_implementation)
    return PeftModel.from_pretrained(base, str(directory), is_trainable=is_trainable)


def _load_with_houlsby_adapters(
    directory: Path, description: dict, task: str, torch_dtype, trust_remote_code: bool, attn_implementation: str
) -> nn.Module:
    from safetensors.torch import load_file

    model = _load_plain(str(directory), task, torch_dtype, trust_remote_code, attn_implementation)
    try:
        names, hidden_size = description["adapted_modules"], description["hidden_size"]
        bottleneck = description["adapter_bottleneck"]
    except KeyError as error:
        raise ConfigError(f"{directory / ADAPTATION_FILE}: missing field {error}") from error
    houlsby.insert_adapters(model, names, hidden_size, bottleneck)
    device = next(model.parameters()).device
    houlsby.load_adapter_state_dict(model, load_file(str(directory / ADAPTER_WEIGHTS_FILE), device=str(device)))
    return model


def _read_description(directory: Path) -> dict | None:
    description_file = directory / ADAPTATION_FILE
    if not description_file.is_file():
        return None  # a directory from elsewhere: a plain model or a peft adapter
    description = read_small_json(description_file)
    if description.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{description_file}: format_version {description.get('format_version')!r} is not "
            f"{FORMAT_VERSION}; it was written by another version of rlhf"
        )
    return description


def check_model_matches(model: nn.Module, method: str) -> None:
    # A mismatch means a stage passed the wrong config: our bug, so not a ConfigError.
    if method in PEFT_METHODS:
        matches = is_peft_model(model)
    elif method == "adapter":
        matches = bool(houlsby.adapted_modules(model))
    else:
        matches = not is_peft_model(model) and not houlsby.adapted_modules(model)
    if not matches:
        raise ValueError(f"save_adapted: the model was not adapted with '{method}' ({type(model).__name__})")
