"""The reward model's training and held-out rankings: read, duplicates merged, held out by prompt."""

from __future__ import annotations

import json
import random

from rlhf.data.rankings import Ranking, merge_annotators, merge_duplicate_completions, read_rankings
from rlhf.errors import DataError


def load_ranking_splits(config) -> tuple[list[Ranking], list[Ranking]]:
    """(train, eval) rankings of an RMStageConfig, duplicates merged; held out by prompt so no prompt is in both."""

    def prepared(path):
        rankings = [_without_duplicate_completions(r, path) for r in read_rankings(path)]
        if config.merge_annotators:
            rankings, _ = merge_annotators(rankings)
        if not rankings:
            raise DataError("no rankings", file=path)
        return rankings

    train = prepared(config.train_file)
    if config.eval_file:
        return train, prepared(config.eval_file)
    prompts = sorted({json.dumps(r.prompt, sort_keys=True) for r in train})
    random.Random(config.seed).shuffle(prompts)
    held_out = set(prompts[:max(1, int(len(prompts) * config.eval_fraction))]) if config.eval_fraction > 0 else set()
    kept = [r for r in train if json.dumps(r.prompt, sort_keys=True) not in held_out]
    if not kept:
        raise DataError(f"{len(prompts)} prompt(s): holding out eval_fraction {config.eval_fraction} of them (at least "
                        f"one) leaves none to train on; add rankings, or set eval_fraction 0, or give an eval_file",
                        file=config.train_file)
    return kept, [r for r in train if json.dumps(r.prompt, sort_keys=True) in held_out]


def _without_duplicate_completions(ranking: Ranking, path: str) -> Ranking:
    try:
        return merge_duplicate_completions(ranking)
    except DataError as error:
        raise DataError(error.reason, file=path, record=f"id {ranking.id!r}", field=error.field) from None
