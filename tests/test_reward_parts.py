"""The reward model's parts: batching rankings, metrics by hand, the Trainer's loss, normalisation."""

import math

import pytest
import torch

from rlhf.rm.batches import RankingCollator, scores_on_grid
from rlhf.rm.evaluation import kendall_tau_b, ranking_metrics
from rlhf.rm.loss import kway_ranking_loss


def test_collator_pads_variable_k_and_scatters_back():
    features = [
        {"input_ids": [[5, 6], [7]], "ranks": [2, 1]},
        {"input_ids": [[8], [9, 10, 11], [12]], "ranks": [1, 3, 2]},
    ]
    batch = RankingCollator(pad_token_id=0)(features)
    assert batch["ranks"].tolist() == [[2, 1, 0], [1, 3, 2]]
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0], [8, 0, 0], [9, 10, 11], [12, 0, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [2, 1, 1, 3, 1]
    assert batch["slot_index"].tolist() == [0, 1, 3, 4, 5]  # row * K + column; slot 2 is the empty one
    flat = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], requires_grad=True)
    grid = scores_on_grid(flat, batch["slot_index"], batch["ranks"])
    assert torch.allclose(grid, torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.4, 0.5]]))
    grid.sum().backward()
    assert flat.grad.tolist() == [1.0] * 5  # every real completion gets its gradient, once


def test_ranking_metrics_by_hand():
    rewards = [[3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0], [0.5, 0.5, 9.0, 0.0]]
    ranks = [[1, 2, 3, 0], [1, 2, 0, 0], [1, 2, 2, 0]]
    metrics = ranking_metrics(rewards, ranks)
    # ranking 1: 3 pairs all right; ranking 2: 1 pair wrong; ranking 3: pairs (0,1) reward tie = 1/2, (0,2) wrong.
    assert metrics["pairwise_accuracy"] == pytest.approx((3 + 0 + 0.5) / 6)
    assert metrics["pairwise_accuracy_k3"] == pytest.approx(3.5 / 5)
    assert metrics["pairwise_accuracy_k2"] == 0.0
    # tau-b: ranking 1 = 1, ranking 2 = -1; ranking 3: pairs (0,1) tie in x only, (0,2) discordant,
    # (1,2) tie in y only -> (0 - 1) / sqrt((1 + 1) * (1 + 1)) = -0.5
    assert metrics["kendall_tau"] == pytest.approx((1 - 1 - 0.5) / 3)
    assert math.isnan(ranking_metrics([[1.0, 1.0]], [[1, 1]])["pairwise_accuracy"])


def test_kendall_tau_b_matches_the_textbook_example():
    # x = (1, 2, 3, 4), y = (1, 3, 2, 4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def ranking_trainer(model, output_dir, shared_prompt_forward: bool):
    from transformers import TrainingArguments

    from rlhf.rm.trainer import RankingTrainer

    args = TrainingArguments(
        output_dir=str(output_dir), report_to="none", use_cpu=True, remove_unused_columns=False, label_names=["ranks"]
    )
    return RankingTrainer(
        model=model,
        args=args,
        data_collator=RankingCollator(pad_token_id=0),
        shared_prompt_forward=shared_prompt_forward,
    )


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
