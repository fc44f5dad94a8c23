"""Padding-free forwards: the real tokens of a padded (B, T) batch run as packed rows, each sequence with its own
positions from 0.

A rollout is padded on the left to its longest prompt and on the right to its longest response, and every
padding token costs a full forward and backward in every layer of the actor and the critic (TRL's PPOTrainer
pays for all of them). Packed, several sequences sit one after another in a row. transformers' masking sees the
positions start again at 0 (`find_packed_sequence_indices`) and keeps each sequence to itself: a block-diagonal
causal mask under sdpa and eager, variable-length sequences under flash attention. Model code that does not
(OPT builds its positions from the attention mask) is found by `keeps_sequences_apart` and runs padded.

Rows hold at most `max(T, row_tokens)` tokens. Under sdpa and eager a row's attention costs its length squared,
so a row no longer than T never costs more than one padded row, and short sequences still share a row. Under
flash attention everything goes into one row (`row_tokens_for`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from rlhf import distributed, probes
from rlhf.attention import is_flash_attention
from rlhf.packed_rows import PackedBatch, plan_rows


def row_tokens_for(attention_implementation: str | None, row_tokens: int) -> int:
    """Tokens per packed row for a model's attention. Flash attention finds packed sequences only in a batch of
    one row (transformers' `_is_packed_sequence`; in several rows they would see each other), and attends within
    each sequence whatever the row's length: one row holds everything. Others: `row_tokens`."""
    return sys.maxsize if is_flash_attention(attention_implementation) else row_tokens


def pack(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, row_tokens: int
) -> PackedBatch:
    """The real tokens of each row of a padded batch, packed into rows of at most max(T, row_tokens) tokens.

    Each sequence keeps the positions the padded forward gives it (`position_ids`, counting real tokens only),
    so its outputs are those of the padded forward up to rounding. A row shorter than the longest is filled
    with token 0 at positions 0, 1, ...: one more sequence that nothing attends to and whose outputs are dropped.
    """
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1).tolist()
    plan = plan_rows(lengths, max(input_ids.shape[1], row_tokens))
    row_of, start_of, used = [0] * len(lengths), [0] * len(lengths), []
    for row, members in enumerate(plan):
        column = 0
        for index in members:
            row_of[index], start_of[index] = row, column
            column += lengths[index]
        used.append(column)
    device = input_ids.device
    width = max(used)
    # Each real token's place: its sequence's row, and its sequence's start plus its rank within the sequence.
    batch, _ = mask.nonzero(as_tuple=True)
    rows = torch.tensor(row_of, device=device)[batch]
    columns = torch.tensor(start_of, device=device)[batch] + mask.long().cumsum(dim=1)[mask] - 1
    packed_ids = input_ids.new_zeros((len(plan), width)).index_put((rows, columns), input_ids[mask])
    # The filler after a row's last sequence counts 0, 1, ... from where that sequence ends.
    filler = torch.arange(width, device=device) - torch.tensor(used, device=device)[:, None]
    packed_positions = filler.clamp(min=0).index_put((rows, columns), position_ids[mask])
    return PackedBatch(packed_ids, packed_positions, mask, rows, columns)


def forward_packed(
    forward: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], row_tokens: int, start: int, stop: int
) -> torch.Tensor:
    """forward(input_ids=, position_ids=) -> (R, C, ...) per-token outputs on the packed batch, returned for
    the padded columns [start, stop) as (B, stop - start, ...)."""
    packed = pack(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], row_tokens)
    return packed.unpack(forward(input_ids=packed.input_ids, position_ids=packed.position_ids), start, stop)


@torch.no_grad()
def keeps_sequences_apart(
    forward: Callable[..., torch.Tensor], module: torch.nn.Module, vocab_size: int, device
) -> bool:
    """Whether forward(input_ids=, position_ids=) keeps two packed sequences apart: the second sequence's
    outputs packed behind a first one equal its outputs alone.

    Every rank runs the same forwards (ZeRO-3 gathers for them) and takes the decision of the most cautious rank.
    """
    first = [(7 * i + 3) % vocab_size for i in range(6)]
    second = [(5 * i + 2) % vocab_size for i in range(3)]
    with probes.without_dropout(module):
        packed = forward(
            input_ids=torch.tensor([first + second], device=device),
            position_ids=torch.tensor([[*range(6), *range(3)]], device=device),
        )[0, 6:]
        alone = forward(
            input_ids=torch.tensor([second], device=device), position_ids=torch.tensor([[*range(3)]], device=device)
        )[0]
    return distributed.all_ranks(probes.same_outputs(packed, alone, module))
