"""One reward from a reward-model ensemble's k scores (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"). Pure functions of tensors, which they only call methods of: the module imports nothing, so that
the PPO config reads AGGREGATIONS from it. Shapes: B responses, k members.

With r_1 … r_k the members' normalised scores of a response:

    mean             r̄ = (1/k) Σ_m r_m                            the ensemble's estimate
    min              min_m r_m                                     worst-case optimisation (WCO)
    mean_minus_std   r̄ − λ·σ,  σ = sqrt((1/k) Σ_m (r_m − r̄)²)     uncertainty-weighted optimisation (UWO)

σ is the population std (the k members are the whole ensemble, divided by k, not k − 1), so that with k = 2 and
λ = 1, r̄ − σ = min(r_1, r_2). Coste et al. penalise the variance; the std is in the reward's own units, so λ is a
plain number of standard deviations whatever the reward's scale. A single reward model (k = 1) gives its own
score under every aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AGGREGATIONS = ("mean", "min", "mean_minus_std")


def ensemble_mean(member_scores: torch.Tensor) -> torch.Tensor:
    """(B,) r̄ of (B, k) member scores."""
    return member_scores.mean(dim=-1)


def ensemble_std(member_scores: torch.Tensor) -> torch.Tensor:
    """(B,) the population std σ of (B, k) member scores (0 for k = 1)."""
    deviations = member_scores - ensemble_mean(member_scores)[..., None]
    return deviations.square().mean(dim=-1).sqrt()


def aggregate_rewards(member_scores: torch.Tensor, method: str, uncertainty_coef: float = 1.0) -> torch.Tensor:
    """(B,) one reward per response from (B, k) member scores: `method` one of AGGREGATIONS (module docstring),
    `uncertainty_coef` λ for mean_minus_std."""
    if member_scores.dim() != 2 or member_scores.shape[1] < 1:
        raise ValueError(f"member scores must be (B, k) with k >= 1; got {tuple(member_scores.shape)}")
    if method == "mean":
        return ensemble_mean(member_scores)
    if method == "min":
        return member_scores.min(dim=-1).values
    if method == "mean_minus_std":
        return ensemble_mean(member_scores) - uncertainty_coef * ensemble_std(member_scores)
    raise ValueError(f"reward aggregation must be one of {AGGREGATIONS}, got '{method}'")


@dataclass(frozen=True)
class RewardAggregation:
    """How PPO turns the reward model's (B, k) member scores into its (B,) scores (`aggregate_rewards`)."""

    method: str = "mean"
    uncertainty_coef: float = 1.0

    def __call__(self, member_scores: torch.Tensor) -> torch.Tensor:
        return aggregate_rewards(member_scores, self.method, self.uncertainty_coef)
