"""Which prompts each PPO step uses, and the PPO-ptx language-modelling batches.

The prompt order of epoch e is a permutation seeded by (seed, e), so the prompts of step N follow from N alone:
the checkpoint's data position is its step, and a resumed run sees the same prompts as an uninterrupted one.
Each step takes `per_rank x world_size` consecutive prompts of that order; rank r takes its slice, and samples each
of its prompts `samples_per_prompt` times in a row (`groups`): a prompt's group never spans two ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from rlhf.ppo.groups import repeat_each


def prompts_for_step(
    prompts: Sequence[Any], step: int, per_rank: int, world_size: int, rank: int, seed: int, samples_per_prompt: int = 1
) -> list[Any]:
    """The prompts rank `rank` samples at PPO step `step` (0-based), wrapping into the next epochs: its `per_rank`
    prompts, each `samples_per_prompt` times in a row (rows [g·n, (g+1)·n) are prompt g's group)."""
    per_step = per_rank * world_size
    start = step * per_step + rank * per_rank
    chosen = []
    for position in range(start, start + per_rank):
        epoch, index = divmod(position, len(prompts))
        chosen.append(prompts[int(_epoch_order(len(prompts), seed, epoch)[index])])
    return repeat_each(chosen, samples_per_prompt)


_orders: dict[tuple[int, int, int], torch.Tensor] = {}


def _epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    key = (count, seed, epoch)
    if key not in _orders:
        _orders[key] = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return _orders[key]


def ptx_batches(
    examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int, seed: int, start_batch: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless language-modelling batches for PPO-ptx (InstructGPT eq. 2) of (input ids, loss mask) examples, from
    batch `start_batch` on; the loss covers the tokens whose mask is 1. Seeded order, so a resumed run continues
    with the same batches."""
    batch_index = start_batch
    while True:
        chosen = [examples[i] for i in _batch_indices(len(examples), batch_size, batch_index, seed)]
        yield _right_padded(chosen, pad_token_id)
        batch_index += 1


def _right_padded(examples: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, loss_mask) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, loss_mask)])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _batch_indices(count: int, batch_size: int, batch_index: int, seed: int) -> list[int]:
    start = batch_index * batch_size
    indices = []
    for position in range(start, start + batch_size):
        epoch, index = divmod(position, count)
        indices.append(int(_epoch_order(count, seed + 1, epoch)[index]))
    return indices
