"""The reward model's training and held-out rankings: read, duplicates merged, held out by prompt."""

from __future__ import annotations

import json
import random

from rlhf.data.rankings import Ranking, merge_annotators, merge_duplicate_completions, read_rankings
from rlhf.errors import DataError


def load_ranking_splits(config) -> tuple[list[Ranking], list[Ranking]]:
    """(train, eval) rankings of an RMStageConfig, duplicates merged; held out by prompt so no prompt is in both."""

    def prepared(path):
        rankings = [merge_duplicate_completions(r) for r in read_rankings(path)]
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
    return ([r for r in train if json.dumps(r.prompt, sort_keys=True) not in held_out],
            [r for r in train if json.dumps(r.prompt, sort_keys=True) in held_out])
