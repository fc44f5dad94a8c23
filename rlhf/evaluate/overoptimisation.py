"""Reward over-optimisation at matched KL (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

Two ways of spending KL from the initial policy on a reward model's score: best-of-N sampling and RL (PPO). Both are
compared against d = sqrt(KL), the distance Gao et al. plot on, with their functional forms fitted to each curve:

    best-of-N:  R(d) = d (α − β d)
    RL:         R(d) = d (α − β log d)

R is a score's gain over the initial policy's (R(0) = 0). Both forms are linear in (α, β) given d, so each fit is
ordinary least squares through the origin, solved in closed form. Pure functions of lists: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# -- best-of-N ------------------------------------------------------------------------------------------------------


def best_of_n_kl(n: int) -> float:
    """KL(best-of-N ‖ policy) = log N − (N − 1) / N, in nats per response (Stiennon et al. 2020, Appendix G.3).

    Exact for responses without ties; an upper bound on the true KL in general (Beirami et al. 2024), which Gao et
    al. use as the best-of-N KL. N = 1: 0; N = 2: log 2 − 1/2 = 0.1931; N = 64: log 64 − 63/64 = 3.1745.
    """
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_index(selector_scores: Sequence[float]) -> int:
    """The sample best-of-N keeps: the highest score under the selector (the reward model); the first on a tie."""
    if not selector_scores:
        raise ValueError("best-of-N needs at least one sample")
    return max(range(len(selector_scores)), key=lambda i: (selector_scores[i], -i))


def best_of_n_expectation(selector_scores: Sequence[float], scores: Sequence[float], n: int) -> float:
    """The mean of `scores` of the sample best-of-n keeps, over every n-subset of the M samples of one prompt.

    With the samples sorted by selector score (ties: an earlier sample ranks higher, as `best_of_n_index` keeps
    it), the sample at place i of M (1 = lowest) is kept by exactly C(i−1, n−1) of the C(M, n) subsets, the
    ones that hold it and n−1 of the i−1 below it:

        E[score of best-of-n] = Σ_i C(i−1, n−1) / C(M, n) · score_(i)

    So M samples drawn once serve every n ≤ M, each n unbiased and with less variance than taking the first n.
    """
    m = len(selector_scores)
    if len(scores) != m:
        raise ValueError(f"{m} selector scores for {len(scores)} scores")
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {m} samples")
    ascending = sorted(range(m), key=lambda i: (selector_scores[i], -i))
    subsets = math.comb(m, n)
    return sum(math.comb(place, n - 1) / subsets * scores[index] for place, index in enumerate(ascending))


def best_of_n_curve(
    rm_scores: Sequence[Sequence[float]], gold_scores: Sequence[Sequence[float]] | None, ns: Sequence[int]
) -> list[dict]:
    """One point per N: its analytic KL, d = sqrt(KL), and the mean over prompts of the kept sample's reward-model
    score and (when given) gold score. `rm_scores[p]` are the M samples of prompt p, scored by the reward model
    that selects; `gold_scores[p]` the same samples under the gold scorer."""
    points = []
    for n in ns:
        kl = best_of_n_kl(n)
        point = {
            "n": n,
            "kl": kl,
            "d": math.sqrt(kl),
            "rm_score": _mean(best_of_n_expectation(row, row, n) for row in rm_scores),
        }
        if gold_scores is not None:
            point["gold_score"] = _mean(best_of_n_expectation(rm, gold, n) for rm, gold in zip(rm_scores, gold_scores))
        points.append(point)
    return points


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def sqrt_kl(kl: float) -> float:
    """d = sqrt(KL); a sampled KL estimate a little below 0 (noise around a policy that has not moved) is 0."""
    return math.sqrt(max(kl, 0.0))


# -- Gao et al.'s forms ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaoFit:
    """α and β of one form fitted to (d, R) points, with its quality over those points.

    r_squared = 1 − SS_res / SS_tot (SS_tot about the mean of R; NaN when every R is equal), and
    rmse = sqrt(SS_res / points), in the score's units."""

    form: str  # "best_of_n" or "rl"
    alpha: float
    beta: float
    r_squared: float
    rmse: float
    points: int

    def __call__(self, d: float) -> float:
        return FORMS[self.form](d, self.alpha, self.beta)


def gao_best_of_n(d: float, alpha: float, beta: float) -> float:
    """R_bon(d) = d (α − β d)."""
    return d * (alpha - beta * d)


def gao_rl(d: float, alpha: float, beta: float) -> float:
    """R_RL(d) = d (α − β log d), with d log d = 0 at d = 0 (its limit)."""
    return d * alpha - beta * _d_log_d(d)


def _d_log_d(d: float) -> float:
    return d * math.log(d) if d > 0 else 0.0


FORMS: dict[str, Callable[[float, float, float], float]] = {"best_of_n": gao_best_of_n, "rl": gao_rl}
# R = α·first(d) − β·second(d): each form's two regressors.
_REGRESSORS: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    "best_of_n": (lambda d: d, lambda d: d * d),
    "rl": (lambda d: d, _d_log_d),
}


def fit_gao(form: str, d: Sequence[float], gains: Sequence[float]) -> GaoFit | None:
    """Least-squares (α, β) of `form` ("best_of_n" or "rl") through the points (d_i, R_i), R = score − score at d = 0.

    With x_i = first(d_i) and z_i = −second(d_i) (best-of-N: d and −d²; RL: d and −d log d), R = α x + β z has
    the normal equations

        [Σx²  Σxz] [α]   [ΣxR]          α = (Σz² ΣxR − Σxz ΣzR) / D
        [Σxz  Σz²] [β] = [ΣzR],         β = (Σx² ΣzR − Σxz ΣxR) / D,   D = Σx² Σz² − (Σxz)².

    None when the points cannot fix both (fewer than two distinct d > 0, or for RL only d ∈ {0, 1}).
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r} (known: {', '.join(FORMS)})")
    if len(d) != len(gains):
        raise ValueError(f"{len(d)} distances for {len(gains)} gains")
    first, second = _REGRESSORS[form]
    x = [first(value) for value in d]
    z = [-second(value) for value in d]
    sxx, szz, sxz = _dot(x, x), _dot(z, z), _dot(x, z)
    sxr, szr = _dot(x, gains), _dot(z, gains)
    determinant = sxx * szz - sxz * sxz
    if determinant <= 1e-12 * max(sxx * szz, 1e-300):
        return None
    alpha = (szz * sxr - sxz * szr) / determinant
    beta = (sxx * szr - sxz * sxr) / determinant
    residuals = [r - FORMS[form](value, alpha, beta) for value, r in zip(d, gains)]
    ss_res = _dot(residuals, residuals)
    mean = sum(gains) / len(gains)
    ss_tot = sum((r - mean) ** 2 for r in gains)
    r_squared = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return GaoFit(form, alpha, beta, r_squared, math.sqrt(ss_res / len(gains)), len(gains))


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def fit_curve(form: str, points: Sequence[dict], key: str) -> GaoFit | None:
    """`fit_gao` on points {"d": ..., key: ...}, whose point at d = 0 (the initial policy) is the baseline: the fit
    is of `key` minus its value there, over the points with d > 0 (the baseline would add a residual of 0 to the
    fit's quality). None without a d = 0 point, or with too few points."""
    usable = sorted(
        (p for p in points if isinstance(p.get(key), (int, float)) and p.get("d") is not None), key=lambda p: p["d"]
    )
    if not usable or usable[0]["d"] > 0:
        return None
    baseline = usable[0][key]
    moved = [p for p in usable if p["d"] > 0]
    return fit_gao(form, [p["d"] for p in moved], [p[key] - baseline for p in moved])


SCORES = ("rm_score", "gold_score")


def curve_fits(form: str, points: Sequence[dict]) -> dict[str, GaoFit | None]:
    """`fit_curve` of each score the points carry (the reward model's always, the gold scorer's where there is one)."""
    return {key: fit_curve(form, points, key) for key in SCORES if any(key in point for point in points)}


def interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Piecewise-linear y at x through the points (xs ascending); None outside [xs[0], xs[-1]] (no extrapolation)."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]  # a single point, x equal to it
