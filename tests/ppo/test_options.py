"""rlhf.ppo.options: every name the config accepts is one the math dispatches on."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo.options import ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS


def test_every_advantage_estimator_has_its_function_and_the_group_ones_are_among_them():
    from rlhf.ppo.experience import ADVANTAGES

    assert set(ADVANTAGES) == set(ADVANTAGE_ESTIMATORS) and set(GROUP_ESTIMATORS) < set(ADVANTAGE_ESTIMATORS)


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_every_kl_estimator_is_computed(estimator):
    from rlhf.ppo.rewards import kl_penalty

    assert torch.isfinite(kl_penalty(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), estimator)).all()


@pytest.mark.parametrize("aggregation", LOSS_AGGREGATIONS)
def test_every_loss_aggregation_is_computed(aggregation):
    from rlhf.ppo.losses import aggregate

    per_token, mask = torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[1, 1], [1, 0]])
    assert torch.isfinite(aggregate(per_token, mask, aggregation, max_tokens=2))
