"""Simulated labelers: they rank K responses to a prompt the way a panel of people would.

Each labeler draws a ranking from a Plackett-Luce model on the gold score with a temperature of
their own (Bradley-Terry for K = 2): careful labelers (low temperature) nearly always put the
better response first, hasty ones often don't, and two labelers can disagree on the same set.
Responses of exactly equal quality are tied now and then, as people do in bucket rankers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Labeler:
    name: str
    temperature: float  # in gold-score units: the score gap at which preference odds are e:1


def make_labelers(
    count: int = 4, seed: int = 0, min_temperature: float = 0.02, max_temperature: float = 0.12
) -> list[Labeler]:
    rng = random.Random(seed)
    return [Labeler(f"labeler-{i}", rng.uniform(min_temperature, max_temperature)) for i in range(count)]


def rank_responses(labeler: Labeler, gold_scores: list[float], rng: random.Random, tie_rate: float = 0.5) -> list[int]:
    """Ranks (1 = best) for responses with these gold scores, drawn from Plackett-Luce.

    Sorting score/temperature + Gumbel noise samples a Plackett-Luce order exactly.
    """
    keys = [score / labeler.temperature - math.log(-math.log(rng.random() or 1e-12)) for score in gold_scores]
    order = sorted(range(len(gold_scores)), key=lambda i: -keys[i])
    ranks = [0] * len(gold_scores)
    place = 0
    for position, index in enumerate(order):
        previous = order[position - 1] if position else None
        tied = previous is not None and gold_scores[index] == gold_scores[previous] and rng.random() < tie_rate
        if not tied:
            place += 1
        ranks[index] = place
    return ranks
