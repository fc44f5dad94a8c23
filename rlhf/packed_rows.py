"""Rows of packed sequences, shared by the forwards that pack: padding-free PPO (`rlhf.ppo.packing`) and
shared-prompt forwards (`rlhf.shared_prompt`).

Both place the real tokens of a padded (B, T) batch into fewer, fuller rows, run the model there, and read each
token's output back at its place: `plan_rows` decides which sequences share a row, `PackedBatch` remembers where
every real token went and brings per-token outputs back to the padded layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per row, first fit in the given order: each sequence goes to the first row with room."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"a sequence of {length} tokens does not fit a row of {capacity}")
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # (R, C)
    position_ids: torch.Tensor  # (R, C)
    mask: torch.Tensor  # (B, T) bool: the real tokens of the padded batch
    rows: torch.Tensor  # (n,) packed row of each real token, in the order of mask.nonzero()
    columns: torch.Tensor  # (n,) packed column of each real token

    def unpack(self, packed: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """(R, C, ...) per-token outputs as (B, stop - start, ...) for padded columns [start, stop); 0 where the
        padded batch holds padding (those positions are masked wherever the result is used)."""
        wanted = torch.zeros_like(self.mask)
        wanted[:, start:stop] = self.mask[:, start:stop]
        keep = wanted[self.mask]
        batch, column = wanted.nonzero(as_tuple=True)
        out = packed.new_zeros((self.mask.shape[0], stop - start, *packed.shape[2:]))
        return out.index_put((batch, column - start), packed[self.rows[keep], self.columns[keep]])
