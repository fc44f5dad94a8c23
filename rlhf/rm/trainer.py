"""The Hugging Face Trainer, taught the K-way ranking loss.

Everything else (DeepSpeed, gradient accumulation, checkpoints, logging, report_to) is the
Trainer's own; only the loss and the evaluation step are ours.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Trainer

from rlhf import _compat
from rlhf.rm.batches import scores_on_grid
from rlhf.rm.loss import kway_ranking_loss
from rlhf.rm.evaluation import ranking_metrics


def ranking_rewards(model, inputs) -> torch.Tensor:
    """(B, K) rewards: every completion of every ranking through the model once."""
    flat = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0]
    return scores_on_grid(flat, inputs["slot_index"], inputs["ranks"])


class RankingTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = ranking_rewards(model, inputs)
        loss = kway_ranking_loss(rewards.float(), inputs["ranks"])
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = _compat.prepare_trainer_inputs(self, inputs)
        with torch.no_grad():
            rewards = ranking_rewards(model, inputs).float()
            loss = kway_ranking_loss(rewards, inputs["ranks"])
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), rewards, inputs["ranks"]


def compute_ranking_metrics(prediction) -> dict[str, float]:
    """Trainer hook: batches were padded with -100 when concatenated; any rank <= 0 is an empty slot."""
    rewards = np.asarray(prediction.predictions, dtype=np.float64)
    ranks = np.asarray(prediction.label_ids)
    ranks = np.where(ranks > 0, ranks, 0).astype(int)
    return ranking_metrics(rewards.tolist(), ranks.tolist())
