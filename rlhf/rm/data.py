"""The reward model's training and held-out rankings: read, duplicates merged, fitted to max_length, held out by
prompt."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from rlhf.data.overlong import Fitted, fit_rankings
from rlhf.data.rankings import Ranking, merge_annotators, merge_duplicate_completions, read_rankings
from rlhf.errors import DataError


def load_ranking_splits(
    config, tokenizer, stop_token_ids: Sequence[int] = ()
) -> tuple[list[Ranking], list[Ranking], list[tuple[str, str, Fitted[Ranking]]]]:
    """(train, eval, [("train", file, fitted), ("eval", ...)]) rankings of an RMStageConfig: duplicates merged,
    held out by prompt so that no prompt is in both, rankings over max_length handled by the `overlong` policy."""

    def read(path):
        rankings = [_without_duplicate_completions(r, path) for r in read_rankings(path)]
        if config.merge_annotators:
            rankings, _ = merge_annotators(rankings)
        if not rankings:
            raise DataError("no rankings", file=path)
        return rankings

    def fitted(name, rankings, path):
        return (
            name,
            path,
            fit_rankings(
                rankings,
                tokenizer,
                max_length=config.max_length,
                policy=config.overlong,
                file=path,
                stop_token_ids=stop_token_ids,
            ),
        )

    if config.eval_file:
        parts = [
            fitted("train", read(config.train_file), config.train_file),
            fitted("eval", read(config.eval_file), config.eval_file),
        ]
    else:
        # Held out before fitting, by the prompts as written: a prompt shortened two ways is still one prompt.
        train, held_out = split_by_prompt(read(config.train_file), config.eval_fraction, config.seed, config.train_file)
        parts = [fitted("train", train, config.train_file)] + (
            [fitted("eval", held_out, config.train_file)] if held_out else []
        )
    return parts[0][2].kept, parts[1][2].kept if len(parts) > 1 else [], parts


def split_by_prompt(
    rankings: list[Ranking], eval_fraction: float, seed: int, path: str
) -> tuple[list[Ranking], list[Ranking]]:
    """(train, held out): `eval_fraction` of the distinct prompts (at least one, when above 0) held out, seeded."""
    prompts = sorted({json.dumps(r.prompt, sort_keys=True) for r in rankings})
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: max(1, int(len(prompts) * eval_fraction))]) if eval_fraction > 0 else set()
    kept = [r for r in rankings if json.dumps(r.prompt, sort_keys=True) not in held_out]
    if not kept:
        raise DataError(
            f"{len(prompts)} prompt(s): holding out eval_fraction {eval_fraction} of them (at least "
            f"one) leaves none to train on; add rankings, or set eval_fraction 0, or give an eval_file",
            file=path,
        )
    return kept, [r for r in rankings if json.dumps(r.prompt, sort_keys=True) in held_out]


def _without_duplicate_completions(ranking: Ranking, path: str) -> Ranking:
    try:
        return merge_duplicate_completions(ranking)
    except DataError as error:
        raise DataError(error.reason, file=path, record=f"id {ranking.id!r}", field=error.field) from None
