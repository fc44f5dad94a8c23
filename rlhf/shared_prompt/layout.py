"""The shared-prompt row layout as pure functions of tensors: where every token goes, its position, what it may
attend to, and where each sequence's outputs are read back.

Sequences come as a padded (N, L) batch (any padding: the reward model's right-padded completions, PPO's
left-padded prompts before right-padded responses) in consecutive groups, e.g. the K completions of a ranking.
A group's sequences share their first tokens (the prompt); in the row those come once, then each sequence's own
tokens (its response) one sequence after another:

    [shared | own_1 | own_2 | ... | own_K]      positions 0..P-1 | P..P+|own_1|-1 | P..P+|own_2|-1 | ...

A token of own_k attends to the shared tokens and to own_k's earlier tokens, causally, and to nothing else; its
position is the one it has in its own sequence. Its outputs are therefore those of the sequence's own forward,
and a shared token's are those of every sequence of the group. Several groups may share a row, each kept to
itself by the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf.packed_rows import PackedBatch, plan_rows


def consecutive_runs(items: Sequence) -> list[int]:
    """The lengths of the runs of equal consecutive items: [a, a, b, a] -> [2, 1, 1]."""
    runs: list[int] = []
    for index, item in enumerate(items):
        if index and item == items[index - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def runs_of_equal_rows(rows: torch.Tensor) -> list[int]:
    """The lengths of the runs of equal consecutive rows of a (N, ...) tensor: PPO's prompts, each repeated
    samples_per_prompt times in a row, come out as their groups."""
    if rows.shape[0] == 0:
        return []
    rows = rows.reshape(rows.shape[0], -1)
    starts = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    starts[1:] = (rows[1:] != rows[:-1]).any(dim=1)
    first = starts.nonzero()[:, 0]
    return torch.diff(first, append=first.new_tensor([rows.shape[0]])).tolist()


def left_aligned(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, longest) each sequence's real tokens from column 0, 0 after them."""
    lengths = mask.sum(dim=1)
    batch, _ = mask.nonzero(as_tuple=True)
    rank = (mask.long().cumsum(dim=1) - 1)[mask]
    width = int(lengths.max()) if lengths.numel() else 0
    return input_ids.new_zeros((mask.shape[0], width)).index_put((batch, rank), input_ids[mask])


def group_of_each(group_sizes: Sequence[int], device=None) -> torch.Tensor:
    """(N,) the group of each sequence, for consecutive groups of the given sizes."""
    sizes = torch.as_tensor(list(group_sizes), dtype=torch.long, device=device)
    if (sizes < 1).any():
        raise ValueError(f"every group needs a sequence; sizes {list(group_sizes)}")
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)


def shared_prefix_lengths(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, group_sizes: Sequence[int]
) -> torch.Tensor:
    """(G,) how many first real tokens all sequences of each group have in common, at most the group's shortest
    length - 1: every sequence keeps a token of its own, at which its last output is read.

    The common part is found from the tokens themselves, not from a prompt length: what is shared is then shared
    exactly (a prompt cut differently for one completion shares less), and a group of one shares all but its last
    token, which computes the same as not sharing.
    """
    mask = attention_mask.bool()
    group = group_of_each(group_sizes, mask.device)
    sizes = torch.bincount(group, minlength=len(group_sizes))
    lengths = mask.sum(dim=1)
    compact = left_aligned(input_ids, mask)
    leader = (sizes.cumsum(0) - sizes)[group]  # the first sequence of each one's group
    within = torch.arange(compact.shape[1], device=mask.device) < torch.minimum(lengths, lengths[leader])[:, None]
    common = ((compact == compact[leader]) & within).long().cumprod(dim=1).sum(dim=1)
    most = torch.full_like(sizes, torch.iinfo(torch.long).max)
    shared = most.scatter_reduce(0, group, common, "amin")
    shortest = most.scatter_reduce(0, group, lengths, "amin")
    return torch.minimum(shared, shortest - 1)


@dataclass(frozen=True, kw_only=True)
class SharedPromptRows(PackedBatch):
    """A padded batch's groups in shared-prompt rows. `rows`/`columns` place every real token of the padded batch:
    the shared tokens of all of a group's sequences at the same place. `unpack` brings per-token outputs back to
    the padded layout (`PackedBatch`)."""

    group_ids: torch.Tensor  # (R, C) the group each place holds; -1 after a row's last group
    segment_ids: torch.Tensor  # (R, C) 0: shared tokens; k: the k-th sequence's own (1-based); -1: filler

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(R, 1, C, C) additive mask in `dtype` (0: may attend; the dtype's lowest value: may not): the form eager
        attention adds to its scores and sdpa takes as it is."""
        allowed = may_attend(self.group_ids, self.segment_ids)
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )[:, None]

    def last_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns), (N,) each, of each sequence's last real token: where a reward model's score is read."""
        ends = self.mask.sum(dim=1).cumsum(dim=0) - 1
        return self.rows[ends], self.columns[ends]


def may_attend(group_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """(R, C, C) bool: whether the token in column i (dim 1) may attend to the one in column j (dim 2): j <= i in
    the same group, and j shared or in i's own segment. Filler places (-1) see the filler before them, so that no
    row of the mask is empty (an empty one would make softmax NaN)."""
    columns = torch.arange(group_ids.shape[1], device=group_ids.device)
    causal = columns[None, :] <= columns[:, None]
    same_group = group_ids[:, :, None] == group_ids[:, None, :]
    visible = (segment_ids[:, None, :] == 0) | (segment_ids[:, :, None] == segment_ids[:, None, :])
    return causal & same_group & visible


def shared_prompt_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, group_sizes: Sequence[int], row_tokens: int = 0
) -> SharedPromptRows:
    """The groups of a padded (N, L) batch as shared-prompt rows of at most max(longest group, row_tokens) tokens,
    groups placed first fit in their order (`plan_rows`).

    A token's position is its place among its sequence's real tokens, as the padded forward counts it (positions
    from the attention mask for left padding, 0.. for right padding). A row ends in filler: token 0 at position 0,
    seen by nothing real.
    """
    mask = attention_mask.bool()
    device = mask.device
    group = group_of_each(group_sizes, device)
    sizes = torch.bincount(group, minlength=len(group_sizes))
    prefix = shared_prefix_lengths(input_ids, mask, group_sizes)
    own = mask.sum(dim=1) - prefix[group]
    span = prefix + torch.zeros_like(prefix).index_add(0, group, own)  # each group's tokens in a row
    plan = plan_rows(span.tolist(), max(int(span.max()), row_tokens))
    row_of, start_of, used = [0] * len(span), [0] * len(span), []
    for row, members in enumerate(plan):
        column = 0
        for member in members:
            row_of[member], start_of[member] = row, column
            column += int(span[member])
        used.append(column)
    row_of, start_of = torch.tensor(row_of, device=device), torch.tensor(start_of, device=device)

    # Each sequence's own tokens follow its group's shared ones and the own tokens of the group's earlier members.
    first = sizes.cumsum(0) - sizes
    before = own.cumsum(0) - own
    own_start = start_of[group] + prefix[group] + before - before[first[group]]
    batch, _ = mask.nonzero(as_tuple=True)
    rank = (mask.long().cumsum(dim=1) - 1)[mask]
    its_group = group[batch]
    shared = rank < prefix[its_group]
    rows = row_of[its_group]
    columns = torch.where(shared, start_of[its_group] + rank, own_start[batch] + rank - prefix[its_group])

    # Shared tokens are written once per sequence of the group, always with the same values.
    shape = (len(plan), max(used))
    packed_ids = input_ids.new_zeros(shape).index_put((rows, columns), input_ids[mask])
    positions = torch.zeros(shape, dtype=torch.long, device=device).index_put((rows, columns), rank)
    group_ids = torch.full(shape, -1, dtype=torch.long, device=device).index_put((rows, columns), its_group)
    segment = torch.where(shared, 0, batch - first[its_group] + 1)
    segment_ids = torch.full(shape, -1, dtype=torch.long, device=device).index_put((rows, columns), segment)
    return SharedPromptRows(packed_ids, positions, mask, rows, columns, group_ids=group_ids, segment_ids=segment_ids)
