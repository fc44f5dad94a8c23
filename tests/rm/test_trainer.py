"""rlhf.rm.trainer: the Trainer's loss is the K-way loss of the model's scores."""

import pytest
import torch

from rlhf.rm.batches import RankingCollator
from rlhf.rm.loss import kway_ranking_loss
from tests.helpers.rm_setup import ranking_trainer


@pytest.mark.parametrize("shared_prompt_forward", [True, False])
def test_trainer_loss_is_the_kway_loss_of_the_model_scores(tiny_reward_model, tmp_path, shared_prompt_forward, capsys):
    from rlhf.rm.trainer import ranking_rewards

    features = [
        {"input_ids": [[1, 5, 6], [1, 7]], "ranks": [1, 2]},
        {"input_ids": [[1, 8], [1, 9, 10], [1, 11]], "ranks": [2, 1, 3]},
    ]
    batch = RankingCollator(pad_token_id=0)(features)
    rewards = ranking_rewards(tiny_reward_model, batch)
    # Each sequence scored alone (no padding) gives the same grid.
    alone = [
        tiny_reward_model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        for feature in features
        for ids in feature["input_ids"]
    ]
    assert rewards[0, :2].tolist() + rewards[1].tolist() == pytest.approx(alone, abs=1e-5)
    trainer = ranking_trainer(tiny_reward_model, tmp_path, shared_prompt_forward)
    loss = trainer.compute_loss(tiny_reward_model, batch)
    assert loss.item() == pytest.approx(kway_ranking_loss(rewards, batch["ranks"]).item(), abs=1e-6)
    # Decided at the first batch: a Llama keeps the responses apart under the shared prompt's mask, silently.
    assert trainer.shared_prompt.enabled == shared_prompt_forward
    assert "shared_prompt_forward" not in capsys.readouterr().out
