"""Houlsby bottleneck adapters, written here because the `adapters` library pins transformers 4.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", §2.1 and fig. 2: each decoder layer gets
two adapters, one on the attention output projection and one on the feed-forward block, each

    h <- h + W_up σ(W_down h)

applied before the residual add. W_up starts at zero, so an adapted model computes exactly what its base does
until the first update. We insert them by wrapping modules of the loaded model, never by editing transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from rlhf.errors import ConfigError

# (attention output projection, feed-forward block) inside one decoder layer, per model family.
LAYER_LAYOUTS = (
    ("self_attn.o_proj", "mlp"),  # Llama, Mistral, Qwen2, Gemma
    ("attn.c_proj", "mlp"),  # GPT-2
    ("attention.dense", "mlp"),  # GPT-NeoX, Pythia
)


class HoulsbyAdapter(nn.Module):
    """`h + W_up σ(W_down h)` with σ = GELU and W_up (weight and bias) zero-initialised."""

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        # Zero W_up makes the adapter the identity at init (the paper's near-identity initialisation, made exact).
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(nn.functional.gelu(self.down(hidden)))


class HoulsbyAdapted(nn.Module):
    """A module of the base model (`base_layer`) whose output passes through `adapter` unless bypassed."""

    def __init__(self, base_layer: nn.Module, adapter: HoulsbyAdapter):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.adapter_enabled = True

    def forward(self, *args, **kwargs):
        output = self.base_layer(*args, **kwargs)
        if not self.adapter_enabled:
            return output
        if isinstance(output, tuple):  # some blocks return (hidden, extras), e.g. mixture-of-experts router logits
            return (self.adapter(output[0]),) + output[1:]
        return self.adapter(output)


def insertion_points(model: nn.Module) -> list[str]:
    """Names of the modules to wrap: the attention output projection and feed-forward block of every layer.

    The decoder layers are the first ModuleList whose every entry has one of LAYER_LAYOUTS' two paths.
    """
    for list_name, module_list in model.named_modules():
        if not isinstance(module_list, nn.ModuleList) or len(module_list) == 0:
            continue
        for attention_path, feed_forward_path in LAYER_LAYOUTS:
            if all(
                _has_submodule(layer, attention_path) and _has_submodule(layer, feed_forward_path)
                for layer in module_list
            ):
                return [
                    f"{list_name}.{index}.{path}"
                    for index in range(len(module_list))
                    for path in (attention_path, feed_forward_path)
                ]
    known = "; ".join(f"{attention} + {feed_forward}" for attention, feed_forward in LAYER_LAYOUTS)
    raise ConfigError(
        f"adaptation_method 'adapter' does not know the layer layout of {type(model).__name__}; "
        f"it supports decoder layers with {known}"
    )


def insert_adapters(model: nn.Module, module_names: list[str], hidden_size: int, bottleneck: int) -> None:
    """Wrap each named module in a HoulsbyAdapted, in place, with a new adapter on that module's device and dtype."""
    for name in module_names:
        base_layer = model.get_submodule(name)
        reference = next(base_layer.parameters())
        adapter = HoulsbyAdapter(hidden_size, bottleneck).to(device=reference.device, dtype=reference.dtype)
        adapter.train(base_layer.training)
        _set_submodule(model, name, HoulsbyAdapted(base_layer, adapter))


def adapted_modules(model: nn.Module) -> dict[str, HoulsbyAdapted]:
    """Every HoulsbyAdapted in `model`, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, HoulsbyAdapted)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only, keyed as in `model.state_dict()` (`<module>.adapter.down.weight`, ...)."""
    return {
        f"{name}.adapter.{key}": tensor
        for name, module in adapted_modules(model).items()
        for key, tensor in module.adapter.state_dict().items()
    }


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by `adapter_state_dict`; every key must match, none may be left over."""
    expected = set(adapter_state_dict(model))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ConfigError(f"adapter weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, module in adapted_modules(model).items():
        prefix = f"{name}.adapter."
        module.adapter.load_state_dict(
            {key[len(prefix) :]: tensor for key, tensor in state.items() if key.startswith(prefix)}
        )


@contextmanager
def adapters_bypassed(model: nn.Module) -> Iterator[None]:
    """Run the base model: every adapter passes its input through untouched until the block exits."""
    modules = list(adapted_modules(model).values())
    previous = [module.adapter_enabled for module in modules]
    try:
        for module in modules:
            module.adapter_enabled = False
        yield
    finally:
        for module, enabled in zip(modules, previous):
            module.adapter_enabled = enabled


@contextmanager
def adapters_removed(model: nn.Module) -> Iterator[None]:
    """Put the original modules back for the duration of the block, so the model saves as a plain base model."""
    wrapped = adapted_modules(model)
    try:
        for name, module in wrapped.items():
            _set_submodule(model, name, module.base_layer)
        yield
    finally:
        for name, module in wrapped.items():
            _set_submodule(model, name, module)


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)
