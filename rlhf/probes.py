"""What the start-up checks of a model's forward share: padding-free PPO asks whether packed sequences stay
apart (`rlhf.ppo.packing`), shared-prompt forwards whether a custom attention mask is honoured
(`rlhf.shared_prompt.forward`). Each runs a few tokens two ways and compares the outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def without_dropout(module: torch.nn.Module) -> Iterator[None]:
    """The module and every sub-module in eval mode for the block, each put back as it was after: dropout would
    make two forwards of the same tokens differ by itself."""
    modes = [(part, part.training) for part in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for part, training in modes:
            part.training = training


def parameter_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of the module's floating-point parameters (float32 when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def same_outputs(candidate: torch.Tensor, reference: torch.Tensor, module: torch.nn.Module) -> bool:
    """Whether two forwards' outputs agree up to the rounding of the module's precision."""
    # Rounding of a half-precision model differs between two shapes of the same tokens; another sequence's
    # tokens in the attention move outputs by far more.
    tolerance = 1e-4 if parameter_dtype(module) == torch.float32 else 2e-2
    candidate, reference = candidate.float(), reference.float()
    return bool((candidate - reference).abs().max() <= tolerance * reference.abs().max().clamp(min=1e-6))
