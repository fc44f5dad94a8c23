"""Is the reward model's confidence right? Calibration of σ(r_i − r_j) against the human labels.

A Bradley-Terry reward model says that response i beats response j with probability σ(r_i − r_j). On held-out
rankings, every pair of ranked responses is taken both ways round, (σ(r_i − r_j), y_ij) and (σ(r_j − r_i), 1 − y_ij),
where y_ij is 1 when the labels put i above j, 0 below, ½ on a tie. Binned by predicted probability, each bin's
mean prediction against how often that ordering holds in the labels is the reliability diagram; the expected
calibration error (Naeini et al. 2015; Guo et al. 2017) is

    ECE = Σ_b (n_b / n) · | mean p in b − mean y in b |

Both ways round makes the diagram symmetric about (½, ½) and the ECE equal to that of the reward model's preferred
response with its confidence in [½, 1] (a reward tie, p = ½, is then ½ right whatever its order). Pure functions of
lists. An ensemble (later) passes its members' rewards: the mean is calibrated as one model, and the spread of the
members' margins is set against the mean's error rate (`uncertainty_bins`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

BINS = 10


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    pairs: int  # predictions in the bin (each pair of responses counts twice: both ways round)
    mean_probability: float | None  # None when empty
    frequency: float | None  # how often the predicted ordering holds in the labels, ties counting half


def sigmoid(margin: float) -> float:
    """σ(m) = 1 / (1 + e^-m), without overflow for large |m|."""
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    return math.exp(margin) / (1.0 + math.exp(margin))


def label_outcome(rank_i: int, rank_j: int) -> float:
    """y_ij: 1 when the labels place i above j (a smaller rank), 0 below, ½ on a tie."""
    return 1.0 if rank_i < rank_j else 0.0 if rank_i > rank_j else 0.5


def pair_predictions(
    rewards: Sequence[Sequence[float]], ranks: Sequence[Sequence[int]]
) -> tuple[list[float], list[float]]:
    """(σ(r_i − r_j), y_ij) for every pair i < j of ranked responses (rank > 0) in each ranking, and the same pair
    the other way round, (σ(r_j − r_i), 1 − y_ij)."""
    probabilities, outcomes = [], []
    for row_rewards, row_ranks in zip(rewards, ranks):
        slots = [i for i, rank in enumerate(row_ranks) if rank > 0]
        for a, i in enumerate(slots):
            for j in slots[a + 1 :]:
                p, y = sigmoid(row_rewards[i] - row_rewards[j]), label_outcome(row_ranks[i], row_ranks[j])
                probabilities += [p, 1.0 - p]
                outcomes += [y, 1.0 - y]
    return probabilities, outcomes


def reliability_bins(
    probabilities: Sequence[float], outcomes: Sequence[float], bins: int = BINS
) -> list[CalibrationBin]:
    """`bins` equal-width bins of [0, 1] (the last one closed): each bin's count, mean prediction and mean outcome."""
    members: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for p, y in zip(probabilities, outcomes):
        members[min(int(p * bins), bins - 1)].append((p, y))
    result = []
    for index, inside in enumerate(members):
        mean_p = sum(p for p, _ in inside) / len(inside) if inside else None
        frequency = sum(y for _, y in inside) / len(inside) if inside else None
        result.append(CalibrationBin(index / bins, (index + 1) / bins, len(inside), mean_p, frequency))
    return result


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    """ECE = Σ_b (n_b / n) |mean p_b − frequency_b|; NaN without predictions."""
    total = sum(b.pairs for b in bins)
    if not total:
        return float("nan")
    return sum(b.pairs / total * abs(b.mean_probability - b.frequency) for b in bins if b.pairs)


@dataclass(frozen=True)
class UncertaintyBin:
    pairs: int
    mean_std: float  # the members' standard deviation of the margin r_better − r_worse, averaged over the bin
    error_rate: float  # share of the bin's pairs the ensemble's mean orders against the labels (a mean tie: ½)


def uncertainty_bins(
    member_rewards: Sequence[Sequence[Sequence[float]]], ranks: Sequence[Sequence[int]], bins: int = BINS
) -> list[UncertaintyBin]:
    """The ensemble's spread against its error rate (Coste et al. 2023): for each pair the labels order, the
    (population) std over members of the margin r_better − r_worse, and whether the members' mean margin orders
    it wrong; pairs sorted by std and cut into `bins` bins of (nearly) equal count. A useful spread rises with the
    error rate. `member_rewards[m][k][i]` is member m's reward of response i of ranking k."""
    pairs: list[tuple[float, float]] = []
    for k, row_ranks in enumerate(ranks):
        slots = [i for i, rank in enumerate(row_ranks) if rank > 0]
        for i in slots:
            for j in slots:
                if row_ranks[i] < row_ranks[j]:
                    margins = [member[k][i] - member[k][j] for member in member_rewards]
                    mean = sum(margins) / len(margins)
                    std = math.sqrt(sum((m - mean) ** 2 for m in margins) / len(margins))
                    pairs.append((std, 1.0 if mean < 0 else 0.5 if mean == 0 else 0.0))
    pairs.sort(key=lambda pair: pair[0])
    result = []
    for index in range(bins):
        inside = pairs[index * len(pairs) // bins : (index + 1) * len(pairs) // bins]
        if inside:
            result.append(
                UncertaintyBin(
                    len(inside), sum(s for s, _ in inside) / len(inside), sum(e for _, e in inside) / len(inside)
                )
            )
    return result


def calibration(
    rewards: Sequence[Sequence[float]] | None,
    ranks: Sequence[Sequence[int]],
    member_rewards: Sequence[Sequence[Sequence[float]]] | None = None,
) -> dict:
    """{"ece", "pairs", "bins"} of one reward model's `rewards` (one row per ranking) against `ranks`; with an
    ensemble's `member_rewards`, the members' mean is the model calibrated (when `rewards` is None) and
    "uncertainty" holds its `uncertainty_bins`. Bins are dicts, ready for JSON."""
    if member_rewards is not None and rewards is None:
        rewards = [
            [sum(member[k][i] for member in member_rewards) / len(member_rewards) for i in range(len(row))]
            for k, row in enumerate(ranks)
        ]
    bins = reliability_bins(*pair_predictions(rewards, ranks))
    result = {
        "ece": expected_calibration_error(bins),
        "pairs": sum(b.pairs for b in bins) // 2,
        "bins": [asdict(b) for b in bins],
    }
    if member_rewards is not None:
        result["uncertainty"] = [asdict(b) for b in uncertainty_bins(member_rewards, ranks)]
    return result
