"""Evaluation shared by the stages: comparing two scores, and gold scorers, each a task's own judge of a response.

A gold scorer stands in for what people truly prefer, where a task has one (the demo's does); it tells whether a
stage really improved the policy. Scorers are plug-ins: a package names one under the `rlhf.gold_scorers` entry
point group (the demo's is in pyproject.toml), or code calls `register_gold_scorer` before a stage runs. Configs
name a scorer, never an import path, so a config cannot run arbitrary code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from statistics import fmean
from typing import Any

from rlhf import distributed
from rlhf.errors import ConfigError

ScoreFunction = Callable[[str, str], float]
ENTRY_POINT_GROUP = "rlhf.gold_scorers"


@dataclass(frozen=True)
class GoldScorer:
    """score(prompt text, response) -> a number, higher is better; task_of(prompt text) -> the prompt's task (the
    demo's operation: sort, reverse, ...), so that results can be broken down by task, or None."""

    score: ScoreFunction
    task_of: Callable[[str], str] | None = None


_REGISTERED: dict[str, GoldScorer] = {}


def register_gold_scorer(name: str, scorer: GoldScorer) -> None:
    _REGISTERED[name] = scorer


def pair_outcome(first: float, second: float) -> float:
    """1 when `first` scores higher, 0 when lower, and a tie counts half."""
    return 1.0 if first > second else 0.5 if first == second else 0.0


def _scorer(name: str) -> GoldScorer:
    if name not in _REGISTERED:
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                register_gold_scorer(name, entry.load())
    if name not in _REGISTERED:
        known = sorted(set(_REGISTERED) | {entry.name for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)})
        raise ConfigError(f"unknown gold_scorer '{name}' (known: {', '.join(known) or 'none'})")
    return _REGISTERED[name]


def gold_scorer(name: str) -> ScoreFunction:
    """The named gold scorer's score function."""
    return _scorer(name).score


def task_of_prompt(name: str) -> Callable[[str], str] | None:
    """The named gold scorer's task label of a prompt text; None when the scorer has none."""
    return _scorer(name).task_of


def gold_evaluation(
    model,
    tokenizer,
    prompts: Sequence[Any],
    scorer: ScoreFunction,
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
