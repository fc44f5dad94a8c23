"""Groups of responses to one prompt: where they sit in a rollout batch, and how batches keep them whole.

The layout, the one contract every part relies on: with `samples_per_prompt` = n, a rank's rollout batch holds
its prompts each repeated n times in a row, so rows [g·n, (g+1)·n) are the n responses to prompt g:

    prompts   p0 p1              (this rank's share of the step's prompts)
    rows      p0 p0 p0 p1 p1 p1  (n = 3: group 0 is rows 0-2, group 1 rows 3-5)

Each rank samples whole groups (prompts are split between ranks before they are repeated), minibatches are made
of whole groups, and the group estimators (RLOO, GRPO, the REINFORCE++ baseline) see a group as one row of
`grouped(x, n)`. n = 1 is today's layout: every row its own group.

Imports torch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

Item = TypeVar("Item")


def repeat_each(items: Sequence[Item], samples_per_prompt: int) -> list[Item]:
    """[a, b] -> [a, a, b, b] for n = 2: each item n times in a row, so that its rows form a group."""
    return [item for item in items for _ in range(samples_per_prompt)]


def group_rows(group: int, samples_per_prompt: int) -> range:
    """The rows of group `group`: [group·n, (group+1)·n)."""
    return range(group * samples_per_prompt, (group + 1) * samples_per_prompt)


def grouped(x: torch.Tensor, samples_per_prompt: int) -> torch.Tensor:
    """(B, ...) as (B / n, n, ...): row g holds group g's n responses. B must be a multiple of n."""
    if samples_per_prompt < 1 or x.shape[0] % samples_per_prompt:
        raise ValueError(f"{x.shape[0]} rows do not split into groups of {samples_per_prompt}")
    return x.reshape(x.shape[0] // samples_per_prompt, samples_per_prompt, *x.shape[1:])


def shuffled_rows_by_group(
    num_rows: int, samples_per_prompt: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A permutation of range(num_rows) that moves whole groups: the groups in a random order, each group's rows
    in their own order. Cut into slices of a multiple of n, every slice holds whole groups.

    With n = 1 it is torch.randperm(num_rows, generator=generator) itself, so runs without groups shuffle their
    minibatches exactly as before.
    """
    groups = torch.randperm(grouped(torch.empty(num_rows), samples_per_prompt).shape[0], generator=generator)
    return (groups[:, None] * samples_per_prompt + torch.arange(samples_per_prompt)).reshape(-1)
