"""KL coefficient controllers for the per-token KL penalty of PPO (Ziegler et al. 2019, §2.2).

Both keep the coefficient in `.value`; the PPO stage calls `.update(measured_kl, n_steps)` after each
rollout batch and saves `state_dict()` in its checkpoint, so that a resumed run continues from the same β.
"""

from __future__ import annotations


class FixedKLController:
    """A constant β (InstructGPT uses a fixed KL coefficient)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0; got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; returns the coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """β steered towards a target KL (Ziegler et al. 2019, eq. 3):

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
        β_{t+1} = β_t (1 + K_β e_t),   K_β = n_steps / horizon

    Clipping the proportional error bounds the change per update, so one noisy KL estimate cannot swing β.
    """

    error_clip = 0.2

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0; got {init_kl_coef}")
        if target_kl <= 0:
            raise ValueError(f"target_kl must be > 0; got {target_kl}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0; got {horizon}")
        self.value = float(init_kl_coef)
        self.target_kl = float(target_kl)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move β for a batch of `n_steps` samples (episodes) whose mean KL was `current_kl`; returns β."""
        error = min(max(float(current_kl) / self.target_kl - 1.0, -self.error_clip), self.error_clip)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target_kl": self.target_kl, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target_kl = float(state["target_kl"])
        self.horizon = state["horizon"]


def make_kl_controller(
    kl_coef: float, adaptive: bool = False, target_kl: float | None = None, horizon: int | None = None
) -> FixedKLController | AdaptiveKLController:
    """The controller a PPO config asks for: fixed at `kl_coef`, or adaptive starting from it."""
    if not adaptive:
        return FixedKLController(kl_coef)
    if target_kl is None or horizon is None:
        raise ValueError("an adaptive KL controller needs target_kl and horizon")
    return AdaptiveKLController(kl_coef, target_kl, horizon)
