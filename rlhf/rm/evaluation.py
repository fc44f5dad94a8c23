"""How good a reward model is: pairwise accuracy (overall and by K) and Kendall's tau against human rankings, its
calibration (rlhf.rm.calibration), and agreement with the gold scorer. An ensemble is measured by its members' mean,
beside each member's accuracy, how much the members disagree, and how well their spread foretells the mean's
errors. `ranking_metrics`, `kendall_tau_b` and `ensemble_spread` are pure functions of lists."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from rlhf import run_files
from rlhf.data.rankings import Ranking, ordered_pairs, ranks_from_scores
from rlhf.evaluation import gold_scorer, pair_outcome
from rlhf.generation import stop_token_ids_of
from rlhf.io import atomic_write_json
from rlhf.rm.calibration import calibration
from rlhf.rm.ensemble import members_of
from rlhf.rm.model import load_reward_model, score_texts_by_member, single_reward_model


def evaluate(model_dir: str | Path, config, tokenizer, rankings: Sequence[Ranking]) -> dict[str, Any]:
    """Held-out pairwise accuracy (overall, by K), Kendall's tau, the ECE, and agreement with the gold scorer; the
    reliability diagram's bins go to calibration.json beside the metrics. An ensemble's are its members' mean's,
    with `ensemble_metrics` beside them."""
    if not rankings:
        return {}
    model, tokenizer, normalization = load_reward_model(str(model_dir), trust_remote_code=config.trust_remote_code)
    by_member = _scored_by_member(model, tokenizer, rankings, normalization, config, model_dir)
    rewards = mean_rows(by_member)
    ranks = [list(r.ranks) for r in rankings]
    metrics = {f"eval_{k}": v for k, v in ranking_metrics(rewards, ranks).items()}
    flat = [reward for row in rewards for reward in row]
    metrics["eval_mean_reward"] = sum(flat) / len(flat)
    ensemble = len(by_member) > 1
    metrics.update(write_calibration(Path(config.output_dir), rewards, ranks, by_member if ensemble else None))
    if ensemble:
        metrics.update(ensemble_metrics(model_dir, config, rankings, by_member, rewards))
    if config.gold_scorer:
        metrics.update(_gold_agreement(rankings, rewards, config.gold_scorer))
    return metrics


def ensemble_metrics(
    model_dir: str | Path,
    config,
    rankings: Sequence[Ranking],
    by_member: list[list[list[float]]],
    mean: list[list[float]],
) -> dict[str, Any]:
    """Each member's held-out pairwise accuracy, how much the members disagree (`ensemble_spread`), and how their
    weight average (the directory's top-level model, PPO's critic start) scores: its accuracy and the correlation
    of its scores with the members' mean."""
    ranks = [list(r.ranks) for r in rankings]
    averaged, tokenizer, normalization = single_reward_model(str(model_dir), config.trust_remote_code)
    averaged_rewards = _scored_by_member(averaged, tokenizer, rankings, normalization, config, model_dir)[0]
    flat_mean, flat_averaged = ([x for row in rows for x in row] for rows in (mean, averaged_rewards))
    return {
        "ensemble_size": len(by_member),
        "eval_member_pairwise_accuracy": [
            ranking_metrics(rewards, ranks)["pairwise_accuracy"] for rewards in by_member
        ],
        **{f"eval_{key}": value for key, value in ensemble_spread(by_member).items()},
        "eval_averaged_pairwise_accuracy": ranking_metrics(averaged_rewards, ranks)["pairwise_accuracy"],
        "eval_averaged_mean_correlation": pearson(flat_averaged, flat_mean),
    }


def write_calibration(
    output_dir: Path,
    rewards: list[list[float]],
    ranks: list[list[int]],
    by_member: list[list[list[float]]] | None = None,
) -> dict[str, float]:
    """{"eval_ece", "eval_calibration_pairs"} for the metrics; the bins in output_dir/calibration.json. With an
    ensemble's `by_member` rewards, the calibration of their mean (`rewards`) and, under "uncertainty", the
    members' spread against the mean's error rate, whose least and most uncertain tenths go into the metrics."""

    result = calibration(rewards, ranks, member_rewards=by_member)
    atomic_write_json(output_dir / run_files.RM_CALIBRATION, result)
    metrics = {"eval_ece": result["ece"], "eval_calibration_pairs": float(result["pairs"])}
    if result.get("uncertainty"):
        metrics["eval_error_rate_least_uncertain"] = result["uncertainty"][0]["error_rate"]
        metrics["eval_error_rate_most_uncertain"] = result["uncertainty"][-1]["error_rate"]
    return metrics


def _scored_by_member(
    model, tokenizer, rankings: Sequence[Ranking], normalization, config, model_dir: str | Path
) -> list[list[list[float]]]:
    """`rankings_by_member`, read as the RM stage trains the model (its max_length, the stop tokens of
    `model_dir`, shared prompts where the config has them)."""
    from rlhf.shared_prompt.forward import OFF, reward_model_support

    # Rank 0 alone scores here; the training already said whether the model fails the check.
    shared = reward_model_support(members_of(model)[0], across_ranks=False) if config.shared_prompt_forward else OFF
    return rankings_by_member(
        model,
        tokenizer,
        rankings,
        normalization,
        config.max_length,
        stop_token_ids_of(str(model_dir), tokenizer),
        shared_prompt=shared,
    )


def score_rankings(
    model,
    tokenizer,
    rankings: Sequence[Ranking],
    normalization,
    max_length: int,
    stop_token_ids: Sequence[int] = (),
    shared_prompt=None,
) -> list[list[float]]:
    """The reward of every completion of every ranking, one row per ranking (an ensemble's: its members' mean),
    each response through each model once (`rankings_by_member`)."""
    return mean_rows(
        rankings_by_member(model, tokenizer, rankings, normalization, max_length, stop_token_ids, shared_prompt)
    )


def rankings_by_member(
    model,
    tokenizer,
    rankings: Sequence[Ranking],
    normalization,
    max_length: int,
    stop_token_ids: Sequence[int] = (),
    shared_prompt=None,
) -> list[list[list[float]]]:
    """Each member's reward of every completion of every ranking, [member][ranking][completion] (one member for a
    single reward model); with `shared_prompt`, a ranking's completions behind one copy of its prompt
    (`score_texts_by_member`)."""
    by_member = score_texts_by_member(
        model,
        tokenizer,
        [r.prompt for r in rankings for _ in r.completions],
        [c for r in rankings for c in r.completions],
        normalization=normalization,
        stop_token_ids=stop_token_ids,
        max_length=max_length,
        shared_prompt=shared_prompt,
    )
    result = []
    for flat in by_member:
        rows, at = [], 0
        for ranking in rankings:
            rows.append(flat[at : at + ranking.k])
            at += ranking.k
        result.append(rows)
    return result


def mean_rows(by_member: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """The members' mean reward of each completion, [ranking][completion]; one member's own rows unchanged."""
    if len(by_member) == 1:
        return [list(row) for row in by_member[0]]
    return [[sum(values) / len(values) for values in zip(*rows)] for rows in zip(*by_member)]


def ensemble_spread(by_member: Sequence[Sequence[Sequence[float]]]) -> dict[str, float]:
    """How much an ensemble's members disagree on held-out responses, [member][ranking][completion] rewards:

    ensemble_std            mean over responses i of the members' (population) std, sqrt(1/k Σ_m (r_mi − r̄_i)²)
    ensemble_relative_std   ensemble_std / the (population) std of r̄_i over the responses: the disagreement
                            in units of how much the mean tells responses apart (free of the reward scale)
    """
    members = [[x for row in rows for x in row] for rows in by_member]
    means = [sum(values) / len(values) for values in zip(*members)]
    stds = [_population_std(values) for values in zip(*members)]
    spread = sum(stds) / len(stds) if stds else float("nan")
    between = _population_std(means) if means else float("nan")
    return {"ensemble_std": spread, "ensemble_relative_std": spread / between if between else float("nan")}


def _population_std(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((x - mean) ** 2 for x in values) / len(values)) ** 0.5


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation of two equally long lists; NaN when either is constant."""
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    covariance = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    scale = (sum((a - mean_x) ** 2 for a in x) * sum((b - mean_y) ** 2 for b in y)) ** 0.5
    return covariance / scale if scale else float("nan")


def _gold_agreement(rankings: Sequence[Ranking], rewards: list[list[float]], scorer_name: str) -> dict[str, float]:
    """How often the RM, and the human labels themselves, order pairs as the gold scorer does."""

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
        row_correct = sum(pair_outcome(scores[b], scores[w]) for b, w in pairs)
        correct, total = correct + row_correct, total + len(pairs)
        by_k[len(slots)][0] += row_correct
        by_k[len(slots)][1] += len(pairs)
        taus.append(kendall_tau_b(scores, [-p for p in places]))
    metrics = {
        "pairwise_accuracy": correct / total if total else float("nan"),
        "pairs": float(total),
        "kendall_tau": fmean(taus) if taus else float("nan"),
    }
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
