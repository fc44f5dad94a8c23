"""After reward-model training: set the reward's zero point, and measure it on held-out rankings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rlhf.data.rankings import Ranking
from rlhf.metrics import ranking_metrics
from rlhf.reward import RewardNormalization, load_reward_model, score_texts


def normalization_records(config, inputs, train_rankings: Sequence[Ranking] = ()) -> tuple[list[dict], str]:
    """(prompt/completion records, their source): the config's file, else the SFT parent's demonstrations."""
    from rlhf.data.sft import load_demonstrations

    source = config.normalization_file
    if not source and inputs.parent is not None:
        parent_train_file = inputs.parent.config.get("train_file", "")
        if parent_train_file and Path(parent_train_file).exists():
            source = parent_train_file
    if source:
        records = load_demonstrations(source)
        return records[:config.normalization_samples], source
    best = [{"prompt": r.prompt, "completion": r.completions[r.ranks.index(min(r.ranks))]} for r in train_rankings]
    return best[:config.normalization_samples], "best-ranked training completions"


def normalise(model_dir: str | Path, config, inputs, train_rankings: Sequence[Ranking] = ()) -> RewardNormalization:
    """Save the bias that makes the mean reward of the demonstrations 0 (InstructGPT §C.2)."""
    model, tokenizer, _ = load_reward_model(str(model_dir), trust_remote_code=config.trust_remote_code)
    records, source = normalization_records(config, inputs, train_rankings)
    raw = score_texts(model, tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records],
                      max_length=config.max_length)
    normalization = RewardNormalization(offset=sum(raw) / len(raw), normalized_on=source, samples=len(raw))
    normalization.save(model_dir)
    return normalization


def evaluate(model_dir: str | Path, config, tokenizer, rankings: Sequence[Ranking]) -> dict[str, Any]:
    """Held-out pairwise accuracy (overall, by K), Kendall's tau, and agreement with the gold scorer."""
    if not rankings:
        return {}
    model, tokenizer, normalization = load_reward_model(str(model_dir), trust_remote_code=config.trust_remote_code)
    prompts = [r.prompt for r in rankings for _ in r.completions]
    completions = [c for r in rankings for c in r.completions]
    flat = score_texts(model, tokenizer, prompts, completions, normalization=normalization, max_length=config.max_length)
    rewards, at = [], 0
    for ranking in rankings:
        rewards.append(flat[at:at + ranking.k])
        at += ranking.k
    metrics = {f"eval_{k}": v for k, v in ranking_metrics(rewards, [list(r.ranks) for r in rankings]).items()}
    metrics["eval_mean_reward"] = sum(flat) / len(flat)
    if config.gold_scorer:
        metrics.update(_gold_agreement(rankings, rewards, config.gold_scorer))
    return metrics


def _gold_agreement(rankings: Sequence[Ranking], rewards: list[list[float]], scorer_name: str) -> dict[str, float]:
    """How often the RM, and the human labels themselves, order pairs as the gold scorer does."""
    from rlhf.data.rankings import ranks_from_scores
    from rlhf.evaluation import gold_scorer

    scorer = gold_scorer(scorer_name)
    gold = [[scorer(r.prompt, c) for c in r.completions] for r in rankings]
    gold_ranks = [list(ranks_from_scores(scores)) for scores in gold]
    return {
        "gold_agreement": ranking_metrics(rewards, gold_ranks)["pairwise_accuracy"],
        # The labels' own agreement with gold: the ceiling a reward model learned from them can expect.
        "labels_gold_agreement": ranking_metrics(gold, [list(r.ranks) for r in rankings])["pairwise_accuracy"],
    }
