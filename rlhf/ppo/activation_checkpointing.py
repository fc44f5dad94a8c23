"""Activation (gradient) checkpointing of actor and critic: each transformer layer keeps only its input through
the forward and recomputes its activations in the backward, so that an update holds one layer's activations
instead of every layer's.

transformers checkpoints a layer only while that layer is in training mode, and PPO keeps actor and critic in
eval mode (`disable_dropout`, so that log π_old and log π agree). For the update, the checkpointed layers alone
are switched to training mode: their attention, MLP and dropout modules stay in eval mode, and a dropout rate a
layer applies itself (OPT's `dropout`) is 0 for the block, so nothing drops out. Generation turns checkpointing
off: a checkpointed layer in training mode would drop its KV cache, and every token would recompute the whole
sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

# Non-reentrant: recomputation works when no input of a layer requires grad (a LoRA model's frozen embeddings) and
# under ZeRO-3, whose hooks gather a layer's parameters again for the recompute.
CHECKPOINT_KWARGS = {"use_reentrant": False}


def enable(model: nn.Module) -> None:
    """Checkpoint every layer of a Hugging Face model, or of the model inside a PeftModel.

    transformers also makes the input embeddings' output require grad (`enable_input_require_grads`), which a
    LoRA model with frozen embeddings needs so that gradients reach the adapters of the first layers.
    """
    from rlhf.adaptation.apply import is_peft_model

    inner = model.get_base_model() if is_peft_model(model) else model
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.23; the old name warns there
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [
        module
        for module in model.modules()
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing
    ]


@contextlib.contextmanager
def in_force(model: nn.Module) -> Iterator[None]:
    """For the block (a forward and its backward), checkpointing runs even though the model is in eval mode."""
    layers = [layer for layer in checkpointed_layers(model) if not layer.training]
    rates = [
        (layer, name, value)
        for layer in layers
        for name, value in vars(layer).items()
        if "dropout" in name and isinstance(value, float)
    ]
    for layer in layers:
        layer.training = True  # this module only: its children stay in eval mode
    for layer, name, _ in rates:
        setattr(layer, name, 0.0)
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False
        for layer, name, value in rates:
            setattr(layer, name, value)


@contextlib.contextmanager
def paused(model: nn.Module) -> Iterator[None]:
    """For the block, no layer checkpoints (generation: no backward, and the KV cache must be kept)."""
    layers = checkpointed_layers(model)
    for layer in layers:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer in layers:
            layer.gradient_checkpointing = True
