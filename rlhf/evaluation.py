"""Gold-score evaluation: how good a policy's responses are by the task's own judge.

On the demo the judge is `rlhf.demo.task.gold_score`, standing in for what people truly prefer;
it is what tells us whether each stage really improved the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean
from typing import Any

from rlhf import distributed
from rlhf.errors import ConfigError

GoldScorer = Callable[[str, str], float]


def gold_scorer(name: str) -> GoldScorer:
    """The named gold scorer. Names, not import paths, so a config cannot run arbitrary code."""
    if name == "demo":
        from rlhf.demo.task import gold_score

        return gold_score
    raise ConfigError(f"unknown gold_scorer '{name}' (known: demo)")


def task_of_prompt(name: str) -> Callable[[str], str] | None:
    """The named gold scorer's task label of a prompt text (the demo's operation: sort, reverse, ...), so that
    results can be broken down by task; None when the scorer has none."""
    if name == "demo":
        from rlhf.demo.task import parse_prompt

        return lambda text: parse_prompt(text).operation
    return None


def gold_evaluation(
    model,
    tokenizer,
    prompts: Sequence[Any],
    scorer: GoldScorer,
    *,
    max_new_tokens: int = 32,
    samples_kept: int = 5,
    **generation,
) -> dict[str, Any]:
    """Mean gold score of the model's responses to `prompts`, and a few of them to read."""
    from rlhf.generation import generate_responses

    responses = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens, **generation)
    scores = [scorer(prompt, response) for prompt, response in zip(prompts, responses)]
    return {
        "gold_score": fmean(scores) if scores else 0.0,
        "samples": [
            {"prompt": p, "response": r, "gold_score": s}
            for p, r, s in list(zip(prompts, responses, scores))[:samples_kept]
        ],
    }


def gold_metrics(model, tokenizer, prompts: list, config, suffix: str) -> dict[str, Any]:
    """{'gold_score_<suffix>': mean, 'gold_samples_<suffix>': a few} on rank 0 when the config names a gold scorer."""

    if not config.gold_scorer or not prompts or not distributed.is_main_process():
        return {}
    result = gold_evaluation(
        model, tokenizer, prompts, gold_scorer(config.gold_scorer), max_new_tokens=config.gold_max_new_tokens
    )
    return {f"gold_score_{suffix}": result["gold_score"], f"gold_samples_{suffix}": result["samples"]}
