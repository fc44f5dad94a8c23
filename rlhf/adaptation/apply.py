"""Turn a loaded model into one whose trainable parameters are exactly those the adaptation method trains."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from rlhf.adaptation import houlsby
from rlhf.adaptation.config import AdaptationConfig, check_task
from rlhf.errors import ConfigError


def apply_adaptation(model: nn.Module, config: AdaptationConfig, task: str = "causal_lm") -> nn.Module:
    """Return `model` adapted by `config.adaptation_method`, with requires_grad set on every parameter.

    Every method trains exactly its own parameters; on reward models it also trains the scalar head (it starts
    untrained). peft methods return a new PeftModel wrapping `model`; the others change `model` in place.

    prompt_tuning feeds learned embeddings instead of token ids, so a reward model cannot find its last real
    token and scores the last position: pad reward batches on the left for it (see also virtual_token_count).
    """
    check_task(task)
    if is_adapted(model):
        raise ConfigError("the model already carries adapters; apply one adaptation to a plain model")
    _check_model_fits_task(model, task)
    method = config.adaptation_method
    head_names = reward_head_names(model) if task == "reward" else []
    if method == "probe" and task != "reward":
        raise ConfigError("adaptation_method 'probe' trains only a reward head, so it applies to reward models only")

    if method == "full":
        model.requires_grad_(True)
        return model
    if method in ("bitfit", "probe", "adapter"):
        if method == "bitfit":
            trainable = _bias_names(model, head_names)
        elif method == "adapter":
            houlsby.insert_adapters(
                model,
                houlsby.insertion_points(model),
                model.config.get_text_config().hidden_size,
                config.adapter_bottleneck,
            )
            trainable = list(houlsby.adapter_state_dict(model))
        else:
            trainable = []
        set_trainable(model, trainable + head_parameter_names(model, head_names))
        return model
    return _apply_peft(model, config, task, head_names)


def reward_head_names(model: nn.Module) -> list[str]:
    """Top-level modules outside the transformer body, e.g. ["score"]: a reward model's scalar head."""
    body = model.base_model_prefix
    names = sorted({name.split(".")[0] for name, _ in model.named_parameters() if name.split(".")[0] != body})
    if not names:
        raise ConfigError(
            f"task 'reward' needs a sequence-classification model with a scalar head; {type(model).__name__} has none"
        )
    return names


def head_parameter_names(model: nn.Module, head_names: list[str]) -> list[str]:
    """Names of the parameters inside the named top-level head modules."""
    return [name for name, _ in model.named_parameters() if name.split(".")[0] in head_names]


def set_trainable(model: nn.Module, names: list[str]) -> None:
    """Make exactly the named parameters trainable and freeze every other one."""
    model.requires_grad_(False)
    parameters = dict(model.named_parameters())
    for name in names:
        parameters[name].requires_grad_(True)


def is_peft_model(model: nn.Module) -> bool:
    """True for a peft model. Does not import peft: if nothing imported it, no model can be a PeftModel."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def is_adapted(model: nn.Module) -> bool:
    """True for a peft model or a model carrying our Houlsby adapters."""
    return is_peft_model(model) or bool(houlsby.adapted_modules(model))


@contextmanager
def disable_adapter_context(model: nn.Module) -> Iterator[None]:
    """Inside the block, `model` computes its base model's outputs: peft adapters disabled, Houlsby adapters bypassed.

    This lets a LoRA (or adapter) actor serve as its own frozen reference policy in PPO, with no second copy.
    Methods that change the base weights (full, bitfit, probe) have no base to fall back to: ConfigError.
    On a reward model the head differs: peft switches back to the head's untrained original, while the Houlsby
    head is trained in place and stays, so only the transformer body is the base model's.
    """
    if is_peft_model(model):
        peft_config = model.peft_config[model.active_adapter]
        if peft_config.is_prompt_learning and peft_config.task_type == "SEQ_CLS":
            # peft 0.21's disable_adapter swaps prepare_inputs_for_generation, which classifiers lack, and crashes.
            raise ConfigError("peft cannot disable a prompt_tuning or prefix_tuning adapter on a reward model")
        with model.disable_adapter():
            yield
    elif houlsby.adapted_modules(model):
        with houlsby.adapters_bypassed(model):
            yield
    else:
        raise ConfigError(
            "this model has no adapter to disable: full, bitfit and probe change the base weights themselves, "
            "so keep a separate frozen reference model"
        )


def virtual_token_count(model: nn.Module) -> int:
    """Positions peft prepends to a prompt-tuned model's logits (outside disable_adapter_context); else 0.

    peft's prompt tuning feeds its learned embeddings as extra input positions, so a causal LM's logits are
    num_virtual_tokens longer than input_ids; slice them off before computing per-token log-probabilities.
    Prefix tuning adds keys and values only, so its logits keep the input length.
    """
    if not is_peft_model(model):
        return 0
    peft_config = model.peft_config[model.active_adapter]
    return peft_config.num_virtual_tokens if peft_config.peft_type == "PROMPT_TUNING" else 0


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    trainable = total = 0
    for parameter in model.parameters():
        # Under DeepSpeed ZeRO-3 a parameter is a local shard; ds_numel is its full size.
        count = getattr(parameter, "ds_numel", parameter.numel())
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def parameter_summary(model: nn.Module) -> str:
    """One line for the log: "trainable 12,345 / 1,234,567 (1.00%)"."""
    trainable, total = count_parameters(model)
    percent = 100 * trainable / total if total else 0.0
    return f"trainable {trainable:,} / {total:,} ({percent:.2f}%)"


def _apply_peft(model: nn.Module, config: AdaptationConfig, task: str, head_names: list[str]) -> nn.Module:
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

    # For SEQ_CLS peft itself appends "classifier" and "score" to modules_to_save (twice for prompt learning),
    # so name only a head called otherwise; the tests check the head trains either way.
    other_heads = [name for name in head_names if name not in ("classifier", "score")]
    common = dict(
        task_type=TaskType.SEQ_CLS if task == "reward" else TaskType.CAUSAL_LM, modules_to_save=other_heads or None
    )
    method = config.adaptation_method
    if method == "lora":
        targets = config.lora_target_modules
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
            bias="none",
            **common,
        )
    elif method == "prompt_tuning":
        peft_config = PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens, **common)
    elif method == "prefix_tuning":
        peft_config = PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, **common)
    else:  # ia3, on peft's per-architecture default targets (keys, values and the feed-forward output)
        model_type = model.config.model_type
        if model_type not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
            raise ConfigError(f"adaptation_method 'ia3' has no default target modules for model type '{model_type}'")
        peft_config = IA3Config(**common)
    # get_peft_model freezes the base model and leaves only the adapter (and modules_to_save) trainable.
    return get_peft_model(model, peft_config)


def _bias_names(model: nn.Module, head_names: list[str]) -> list[str]:
    names = [
        name
        for name, _ in model.named_parameters()
        if name.rsplit(".", 1)[-1] == "bias" and name.split(".")[0] not in head_names
    ]
    if not names:
        raise ConfigError(
            f"adaptation_method 'bitfit' trains bias terms, but {type(model).__name__} has none "
            "(for Llama-style models set attention_bias/mlp_bias, or choose another method)"
        )
    return names


def _check_model_fits_task(model: nn.Module, task: str) -> None:
    # A causal LM has an output embedding (its LM head); a reward model has a scalar head instead.
    has_lm_head = model.get_output_embeddings() is not None
    if task == "causal_lm" and not has_lm_head:
        raise ConfigError(f"task 'causal_lm' needs a model with a language-model head; got {type(model).__name__}")
    if task == "reward" and has_lm_head:
        raise ConfigError(f"task 'reward' needs a sequence-classification model; got {type(model).__name__}")
