"""How much labelers agree where several ranked the same responses: the ceiling of a reward model's accuracy.

A reward model learned from the labels cannot order held-out pairs as the labels do much more often than two
labelers order the same pair alike. Rankings are compared where they carry annotator ids and two or more
annotators ranked the same set of responses to the same prompt (rlhf.data.rankings.merge_annotators groups them
the same way); an annotator who ranked a set twice counts with the first ranking.

- pairwise agreement: over every pair of annotators and every pair of responses both ranked, 1 when they order the
  pair the same way (a tie by both included), 0 when they order it oppositely, ½ when one of them ties it;
- Krippendorff's α, ordinal (Krippendorff 2011): each response a unit, each annotator's (dense) rank of it a value;
- each annotator's pairwise agreement with the others.

Pure functions of lists; import-light.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from rlhf.data.rankings import Ranking, dense_ranks

METRICS = ("nominal", "ordinal", "interval")


def order_agreement(a_first: int, a_second: int, b_first: int, b_second: int) -> float:
    """Two annotators' places for the same two responses: 1 the same order (both tied included), 0 the opposite
    order, ½ when exactly one of them ties the pair."""
    a, b = (a_first > a_second) - (a_first < a_second), (b_first > b_second) - (b_first < b_second)
    if a == b:
        return 1.0
    return 0.5 if a == 0 or b == 0 else 0.0


def krippendorff_alpha(units: Iterable[Sequence[float]], metric: str = "ordinal") -> float:
    """Krippendorff's α over `units`, each the values its coders gave it (missing values left out), as in
    Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability":

        o_ck = Σ_u (number of c-k pairs of values from different coders in u) / (m_u − 1)   (units with m_u ≥ 2)
        n_c = Σ_k o_ck,  n = Σ_c n_c
        α = 1 − (n − 1) · Σ_ck o_ck δ²_ck / Σ_ck n_c n_k δ²_ck

    with δ²_ck = [c ≠ k] (nominal), (c − k)² (interval), or, ordinal, (Σ_{g=c..k} n_g − (n_c + n_k)/2)² over the
    values in their order. 1 is perfect agreement, 0 what chance gives; NaN when fewer than two values pair or
    every pairable value is the same (nothing to disagree on).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    coincidences: dict[tuple[float, float], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    coincidences[(c, k)] += 1 / (m - 1)
    totals: dict[float, float] = defaultdict(float)
    for (c, _), count in coincidences.items():
        totals[c] += count
    n = sum(totals.values())
    values = sorted(totals)
    if n < 2 or len(values) < 2:
        return float("nan")
    delta = _distances(values, totals, metric)
    observed = sum(count * delta[c, k] for (c, k), count in coincidences.items())
    expected = sum(totals[c] * totals[k] * delta[c, k] for c in values for k in values)
    return 1 - (n - 1) * observed / expected


def _distances(values: list[float], totals: dict[float, float], metric: str) -> dict[tuple[float, float], float]:
    delta = {}
    for a, c in enumerate(values):
        for b, k in enumerate(values):
            if metric == "nominal":
                delta[c, k] = float(c != k)
            elif metric == "interval":
                delta[c, k] = float(c - k) ** 2
            else:
                low, high = min(a, b), max(a, b)
                between = sum(totals[values[g]] for g in range(low, high + 1))
                delta[c, k] = (between - (totals[c] + totals[k]) / 2) ** 2 if a != b else 0.0
    return delta


@dataclass
class Agreement:
    """Agreement between annotators on the responses several of them ranked."""

    sets: int = 0  # (prompt, responses) sets ranked by two or more annotators
    shared_pairs: int = 0  # comparisons: a pair of annotators on a pair of responses
    pairwise: float = float("nan")
    alpha: float = float("nan")  # Krippendorff's α, ordinal
    # annotator -> (their pairwise agreement with the others, comparisons it rests on), most comparisons first
    by_annotator: dict[str, tuple[float, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "sets": self.sets,
            "shared_pairs": self.shared_pairs,
            "pairwise": self.pairwise,
            "alpha": self.alpha,
            "by_annotator": {name: list(value) for name, value in self.by_annotator.items()},
        }


def shared_rankings(rankings: Iterable[Ranking]) -> list[dict[str, dict[str, int]]]:
    """For each (prompt, set of responses) ranked by two or more annotators: annotator -> {response: dense rank}."""
    groups: dict[Hashable, dict[str, dict[str, int]]] = {}
    for ranking in rankings:
        if ranking.annotator is None:
            continue
        key = (json.dumps(ranking.prompt, sort_keys=True, ensure_ascii=False), frozenset(ranking.completions))
        group = groups.setdefault(key, {})
        if ranking.annotator not in group:  # the first ranking of an annotator who ranked the set twice
            group[ranking.annotator] = dict(zip(ranking.completions, dense_ranks(ranking.ranks)))
    return [group for group in groups.values() if len(group) >= 2]


def labeler_agreement(rankings: Iterable[Ranking]) -> Agreement:
    """`Agreement` of the rankings' annotators (see the module docstring); empty when nobody's rankings overlap."""
    groups = shared_rankings(rankings)
    if not groups:
        return Agreement()
    outcomes: list[float] = []
    by_annotator: dict[str, list[float]] = defaultdict(list)
    units: list[list[int]] = []
    for group in groups:
        annotators = sorted(group)
        responses = sorted(next(iter(group.values())))
        units += [[group[name][text] for name in annotators] for text in responses]
        for a, first in enumerate(annotators):
            for second in annotators[a + 1 :]:
                for i, x in enumerate(responses):
                    for y in responses[i + 1 :]:
                        value = order_agreement(group[first][x], group[first][y], group[second][x], group[second][y])
                        outcomes.append(value)
                        by_annotator[first].append(value)
                        by_annotator[second].append(value)
    per_annotator = {
        name: (sum(values) / len(values), len(values))
        for name, values in sorted(by_annotator.items(), key=lambda item: (-len(item[1]), item[0]))
    }
    return Agreement(
        len(groups),
        len(outcomes),
        sum(outcomes) / len(outcomes) if outcomes else float("nan"),
        krippendorff_alpha(units, "ordinal"),
        per_annotator,
    )
