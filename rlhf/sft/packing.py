"""Packed SFT batches as rows, for attention implementations without variable-length kernels.

TRL's SFTTrainer, when packing (best-fit decreasing), flattens the whole batch into one row and marks where each
demonstration starts with `position_ids`; flash attention's variable-length kernels then attend within each
demonstration only. Every other attention implementation (sdpa, eager: all a CPU has, and GPUs without
flash-attn) turns those position ids into a block-diagonal mask over the flattened row, so attention costs
(batch x max_length)^2 instead of batch x max_length^2, slower than no packing at all
(benchmarks/sft_throughput.py). Keeping each packed row a row, with positions
restarting at each demonstration and no attention mask, gives transformers the same per-demonstration mask at
the per-row cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhf import _compat
from rlhf.attention import is_flash_attention


def has_varlen_attention(attention_implementation: str | None) -> bool:
    """Whether an attention implementation runs a flattened batch per demonstration (cu_seq_lens), without a
    dense mask: flash attention 2 and 3, and the hub kernels built on them."""
    return is_flash_attention(attention_implementation)


@dataclass
class PackedRowsCollator:
    """Collate packed examples (`input_ids`, `labels`, `seq_lengths` from TRL's packing) into right-padded rows.

    Returns `input_ids`, `labels` and `position_ids`, shape (rows, longest row), and no attention mask: a causal
    model never attends from a real token to the padding after it, and without a mask transformers reads the
    demonstration boundaries from the restarting positions. Positions run on through the padding, so that a
    position of 0 marks exactly the start of a demonstration. The first token of each demonstration is not a
    label: the previous demonstration's last token must not learn to predict it.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.as_tensor(example["input_ids"])
            labels[row, :length] = torch.as_tensor(example.get("labels", example["input_ids"]))
            position_ids[row] = row_positions(example.get("seq_lengths") or [length], width)
        labels[position_ids == 0] = -100
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def row_positions(seq_lengths: list[int], width: int) -> torch.Tensor:
    """Positions restarting at each demonstration, the last one continuing through the padding to `width`."""
    positions = [torch.arange(n) for n in seq_lengths[:-1]]
    positions.append(torch.arange(width - sum(seq_lengths[:-1])))
    return torch.cat(positions)


def keep_packed_rows(trainer) -> bool:
    """Give a padding-free SFTTrainer the row collator unless its model has variable-length attention kernels.

    Returns whether it did. TRL refuses a custom collator with packing, so the trainer's is replaced after
    construction; the Trainer reads `data_collator` only when it builds a data loader.
    """

    attention = _compat.attention_implementation(trainer.model.config)
    if not _compat.sft_trainer_is_padding_free(trainer) or has_varlen_attention(attention):
        return False
    trainer.data_collator = PackedRowsCollator(trainer.processing_class.pad_token_id)
    return True
