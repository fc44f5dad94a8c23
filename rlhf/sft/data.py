"""The demonstrations SFT trains and evaluates on, fitted to max_length and tokenized as the policy will write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhf.data.demonstrations import load_demonstrations
from rlhf.data.formatting import demonstration_ids
from rlhf.data.overlong import Fitted, fit_demonstrations


def load_demonstration_splits(
    config, tokenizer, stop_token_ids: Sequence[int]
) -> list[tuple[str, str, Fitted[dict[str, Any]]]]:
    """[("train", file, fitted demonstrations)] of an SFTStageConfig, then ("eval", ...) when there is an eval_file.

    Demonstrations over max_length follow the config's `overlong` policy."""
    named = [("train", config.train_file)] + ([("eval", config.eval_file)] if config.eval_file else [])
    return [
        (
            name,
            path,
            fit_demonstrations(
                load_demonstrations(path),
                tokenizer,
                max_length=config.max_length,
                policy=config.overlong,
                file=path,
                stop_token_ids=stop_token_ids,
            ),
        )
        for name, path in named
    ]


def tokenized(records: Sequence[dict[str, Any]], tokenizer, stop_token_ids: Sequence[int]):
    """A `datasets.Dataset` of `input_ids` and `completion_mask`, which TRL's SFTTrainer takes as already
    tokenized: the ids every stage agrees the policy writes (rlhf.data.formatting.demonstration_ids)."""
    import datasets

    rows = []
    for record in records:
        input_ids, completion_mask = demonstration_ids(
            tokenizer, record["prompt"], record["completion"], stop_token_ids
        )
        rows.append({"input_ids": input_ids, "completion_mask": completion_mask})
    return datasets.Dataset.from_list(rows)
