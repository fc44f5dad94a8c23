"""Which prompts each PPO step uses, and the PPO-ptx language-modelling batches.

The prompt order of epoch e is a permutation seeded by (seed, e), so the prompts of step N follow from N alone:
the checkpoint's data position is its step, and a resumed run sees the same prompts as an uninterrupted one.
Each step takes `per_rank x world_size` consecutive prompts of that order; rank r takes its slice.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from rlhf.data.formatting import padding_side, prompt_text, response_text


def prompts_for_step(prompts: Sequence[Any], step: int, per_rank: int, world_size: int, rank: int,
                     seed: int) -> list[Any]:
    """The prompts rank `rank` samples at PPO step `step` (0-based), wrapping into the next epochs."""
    per_step = per_rank * world_size
    start = step * per_step + rank * per_rank
    chosen = []
    for position in range(start, start + per_rank):
        epoch, index = divmod(position, len(prompts))
        chosen.append(prompts[int(_epoch_order(len(prompts), seed, epoch)[index])])
    return chosen


_orders: dict[tuple[int, int, int], torch.Tensor] = {}


def _epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    key = (count, seed, epoch)
    if key not in _orders:
        _orders[key] = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return _orders[key]


def ptx_batches(records: list[dict[str, Any]], tokenizer, batch_size: int, max_length: int, seed: int,
                start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless language-modelling batches for PPO-ptx (InstructGPT eq. 2), from batch `start_batch` on.

    Records are demonstrations (prompt/completion) or plain text ({"text": ...}); the loss covers every token,
    as a pretraining loss does. Seeded order, so a resumed run continues with the same batches.
    """
    texts = [record["text"] if "text" in record else
             prompt_text(tokenizer, record["prompt"]) + response_text(record["completion"]) for record in records]
    batch_index = start_batch
    while True:
        chosen = [texts[i] for i in _batch_indices(len(texts), batch_size, batch_index, seed)]
        with padding_side(tokenizer, "right"):
            encoded = tokenizer(chosen, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        yield {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
        batch_index += 1


def _batch_indices(count: int, batch_size: int, batch_index: int, seed: int) -> list[int]:
    start = batch_index * batch_size
    indices = []
    for position in range(start, start + batch_size):
        epoch, index = divmod(position, count)
        indices.append(int(_epoch_order(count, seed + 1, epoch)[index]))
    return indices
