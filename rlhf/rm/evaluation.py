"""How good a reward model is: pairwise accuracy (overall and by K) and Kendall's tau against human rankings, its
calibration (rlhf.rm.calibration), and agreement with the gold scorer. `ranking_metrics` and `kendall_tau_b` are
pure functions of lists."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

from rlhf.data.rankings import Ranking, ordered_pairs
from rlhf.generation import stop_token_ids_of
from rlhf.rm.model import load_reward_model, score_texts


def evaluate(model_dir: str | Path, config, tokenizer, rankings: Sequence[Ranking]) -> dict[str, Any]:
    """Held-out pairwise accuracy (overall, by K), Kendall's tau, the ECE, and agreement with the gold scorer; the
    reliability diagram's bins go to calibration.json beside the metrics."""
    if not rankings:
        return {}
    from rlhf.shared_prompt.forward import OFF, reward_model_support

    model, tokenizer, normalization = load_reward_model(str(model_dir), trust_remote_code=config.trust_remote_code)
    # Rank 0 alone scores here; the training already said whether the model fails the check.
    shared = reward_model_support(model, across_ranks=False) if config.shared_prompt_forward else OFF
    rewards = score_rankings(model, tokenizer, rankings, normalization, config.max_length,
                             stop_token_ids_of(str(model_dir), tokenizer), shared_prompt=shared)
    metrics = {f"eval_{k}": v for k, v in ranking_metrics(rewards, [list(r.ranks) for r in rankings]).items()}
    flat = [reward for row in rewards for reward in row]
    metrics["eval_mean_reward"] = sum(flat) / len(flat)
    metrics.update(write_calibration(Path(config.output_dir), rewards, [list(r.ranks) for r in rankings]))
    if config.gold_scorer:
        metrics.update(_gold_agreement(rankings, rewards, config.gold_scorer))
    return metrics


def write_calibration(output_dir: Path, rewards: list[list[float]], ranks: list[list[int]]) -> dict[str, float]:
    """{"eval_ece", "eval_calibration_pairs"} for the metrics; the bins in output_dir/calibration.json."""
    from rlhf import run_files
    from rlhf.io import atomic_write_json
    from rlhf.rm.calibration import calibration

    result = calibration(rewards, ranks)
    atomic_write_json(output_dir / run_files.RM_CALIBRATION, result)
    return {"eval_ece": result["ece"], "eval_calibration_pairs": float(result["pairs"])}


def score_rankings(model, tokenizer, rankings: Sequence[Ranking], normalization, max_length: int,
                   stop_token_ids: Sequence[int] = (), shared_prompt=None) -> list[list[float]]:
    """The reward of every completion of every ranking, one row per ranking, each response through the model once
    (with `shared_prompt`, a ranking's completions behind one copy of its prompt: `score_texts`)."""
    flat = score_texts(model, tokenizer, [r.prompt for r in rankings for _ in r.completions],
                       [c for r in rankings for c in r.completions], normalization=normalization,
                       stop_token_ids=stop_token_ids, max_length=max_length, shared_prompt=shared_prompt)
    rows, at = [], 0
    for ranking in rankings:
        rows.append(flat[at:at + ranking.k])
        at += ranking.k
    return rows


def pair_agreement(better_reward: float, worse_reward: float) -> float:
    """1 when the reward orders a pair as it should, 0 when it reverses it, and half for a tie."""
    return 1.0 if better_reward > worse_reward else 0.5 if better_reward == worse_reward else 0.0


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


def ranking_metrics(rewards: Sequence[Sequence[float]], ranks: Sequence[Sequence[int]]) -> dict[str, float]:
    """Metrics of predicted rewards against human ranks, one row per ranking (rank 0 or below = empty slot).

    - pairwise_accuracy: share of ordered pairs (better, worse) with reward[better] > reward[worse]; a
      reward tie counts half. Pairs are pooled over all rankings, as InstructGPT reports it.
    - pairwise_accuracy_k<K>: the same over rankings with K completions.
    - kendall_tau: mean over rankings of Kendall's tau-b between rewards and the human order.
    """
    correct, total = 0.0, 0
    by_k: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
    taus = []
    for row_rewards, row_ranks in zip(rewards, ranks):
        slots = [i for i, rank in enumerate(row_ranks) if rank > 0]
        places = [row_ranks[i] for i in slots]
        scores = [row_rewards[i] for i in slots]
        pairs = ordered_pairs(places)
        if not pairs:
            continue
        row_correct = sum(pair_agreement(scores[b], scores[w]) for b, w in pairs)
        correct, total = correct + row_correct, total + len(pairs)
        by_k[len(slots)][0] += row_correct
        by_k[len(slots)][1] += len(pairs)
        taus.append(kendall_tau_b(scores, [-p for p in places]))
    metrics = {"pairwise_accuracy": correct / total if total else float("nan"), "pairs": float(total),
               "kendall_tau": fmean(taus) if taus else float("nan")}
    for k, (k_correct, k_total) in sorted(by_k.items()):
        metrics[f"pairwise_accuracy_k{k}"] = k_correct / k_total
    return metrics


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)); 0 when undefined."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 0.0
