"""Rankings as model batches: one ranking is one batch element, each completion one sequence.

A batch of B rankings with up to K completions runs every real completion through the model once
(K forward passes per ranking, not 2·C(K,2) as pair expansion would) and scatters the scores back
to a (B, K) grid whose empty slots have rank 0 (InstructGPT §C.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhf.data.formatting import prompt_token_ids, reward_input_ids
from rlhf.data.rankings import Ranking


def tokenize_rankings(
    rankings: Sequence[Ranking], tokenizer, stop_token_ids: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """{"input_ids": [ids per completion], "ranks": [...]} per ranking, each completion as the reward model reads
    it (`reward_input_ids`: the ids PPO will score). The rankings are fitted to max_length already."""
    features = []
    for ranking in rankings:
        prompt_ids = prompt_token_ids(tokenizer, ranking.prompt)
        features.append(
            {
                "input_ids": [
                    reward_input_ids(
                        tokenizer, ranking.prompt, completion, stop_token_ids=stop_token_ids, prompt_ids=prompt_ids
                    )
                    for completion in ranking.completions
                ],
                "ranks": list(ranking.ranks),
            }
        )
    return features


@dataclass
class RankingCollator:
    """Pads a list of tokenized rankings into one batch of sequences plus a (B, K) grid of ranks."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from rlhf.rm.model import pad_right

        width = max(len(feature["ranks"]) for feature in features)
        ranks = torch.zeros((len(features), width), dtype=torch.long)
        sequences, slots = [], []
        for row, feature in enumerate(features):
            ranks[row, : len(feature["ranks"])] = torch.tensor(feature["ranks"], dtype=torch.long)
            for column, ids in enumerate(feature["input_ids"]):
                sequences.append(ids)
                slots.append(row * width + column)
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "ranks": ranks,
            "slot_index": torch.tensor(slots, dtype=torch.long),
        }


def ranking_sizes(slot_index, ranks) -> list[int]:
    """How many sequences of the batch each ranking has, in batch order (its consecutive sequences)."""
    import torch

    return torch.bincount(slot_index // ranks.shape[1], minlength=ranks.shape[0]).tolist()


def scores_on_grid(flat_scores, slot_index, ranks):
    """Place one score per sequence into the (B, K) grid of `ranks`; empty slots hold 0 (and rank 0)."""
    import torch

    grid = torch.zeros(ranks.numel(), dtype=flat_scores.dtype, device=flat_scores.device)
    return grid.scatter(0, slot_index, flat_scores).view_as(ranks)
