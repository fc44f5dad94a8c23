"""rlhf.ppo.kl_control against numbers worked out by hand."""

from __future__ import annotations

import pytest

from rlhf.ppo.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.1)
    assert controller.update(current_kl=50.0, n_steps=256) == 0.1
    assert controller.update(current_kl=0.0, n_steps=256) == 0.1
    assert controller.value == 0.1


def test_adaptive_controller_by_hand():
    # β0 = 0.2, target 6, horizon 10000, 256 episodes per update: K_β = 256 / 10000 = 0.0256
    controller = AdaptiveKLController(init_kl_coef=0.2, target_kl=6.0, horizon=10000)
    # KL 9: e = 9/6 - 1 = 0.5, clipped to 0.2: β = 0.2 · (1 + 0.2 · 0.0256) = 0.2 · 1.00512 = 0.201024
    assert controller.update(9.0, 256) == pytest.approx(0.201024)
    # KL 6.6: e = 0.1: β = 0.201024 · 1.00256 = 0.20153862144
    assert controller.update(6.6, 256) == pytest.approx(0.20153862144)
    # KL 0: e = -1, clipped to -0.2: β = 0.20153862144 · 0.99488 = 0.2005067437...
    #   (0.20153862144 - 0.20153862144 · 0.00512 = 0.20153862144 - 0.00103187774 = 0.20050674370)
    assert controller.update(0.0, 256) == pytest.approx(0.2005067437)
    # KL on target: e = 0, β unchanged
    assert controller.update(6.0, 256) == pytest.approx(0.2005067437)
    assert controller.value == pytest.approx(0.2005067437)


def test_adaptive_controller_step_scales_with_n_steps():
    # e = 4.5/3 - 1 = 0.5 -> clipped to 0.2; n_steps = horizon: β = 1 · (1 + 0.2) = 1.2; then KL 2.7: e = -0.1,
    # n_steps = horizon / 2: β = 1.2 · (1 - 0.05) = 1.14
    controller = AdaptiveKLController(1.0, target_kl=3.0, horizon=100)
    assert controller.update(4.5, 100) == pytest.approx(1.2)
    assert controller.update(2.7, 50) == pytest.approx(1.14)


def test_state_dict_round_trip_resumes_identically():
    uninterrupted = AdaptiveKLController(0.2, 6.0, 10000)
    for kl in (9.0, 6.6, 1.0):
        uninterrupted.update(kl, 256)
    first = AdaptiveKLController(0.2, 6.0, 10000)
    first.update(9.0, 256)
    first.update(6.6, 256)
    resumed = AdaptiveKLController(0.05, 1.0, 7)  # built with other settings; the state overrides them
    resumed.load_state_dict(first.state_dict())
    resumed.update(1.0, 256)
    assert resumed.state_dict() == pytest.approx(uninterrupted.state_dict())

    fixed = FixedKLController(0.3)
    restored = FixedKLController(0.0)
    restored.load_state_dict(fixed.state_dict())
    assert restored.value == 0.3


def test_make_kl_controller():
    fixed = make_kl_controller(0.05)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.05
    adaptive = make_kl_controller(0.05, adaptive=True, target_kl=6.0, horizon=10000)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target_kl, adaptive.horizon) == (0.05, 6.0, 10000)


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_kl_controller(0.1, adaptive=True),
        lambda: make_kl_controller(0.1, adaptive=True, target_kl=0.0, horizon=10),
        lambda: make_kl_controller(0.1, adaptive=True, target_kl=6.0, horizon=0),
        lambda: make_kl_controller(-0.1),
    ],
    ids=["missing-target", "zero-target", "zero-horizon", "negative-coef"],
)
def test_bad_settings_are_rejected(build):
    with pytest.raises(ValueError):
        build()
