"""The Hugging Face Trainer, taught the K-way ranking loss.

Everything else (DeepSpeed, gradient accumulation, checkpoints, logging, report_to) is the
Trainer's own; only the loss and the evaluation step are ours.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Trainer

from rlhf import _compat, distributed
from rlhf.rm.batches import ranking_sizes, scores_on_grid
from rlhf.rm.evaluation import ranking_metrics
from rlhf.rm.loss import kway_ranking_loss
from rlhf.rm.model import raw_scores
from rlhf.shared_prompt.forward import OFF, SharedPromptSupport, reward_model_support


def ranking_rewards(model, inputs, shared_prompt: SharedPromptSupport = OFF) -> torch.Tensor:
    """(B, K) rewards: every completion of every ranking through the model once; with `shared_prompt`, each
    ranking's completions behind one copy of its prompt (the same scores to float tolerance)."""
    flat = raw_scores(
        model,
        inputs["input_ids"],
        inputs["attention_mask"],
        shared_prompt,
        ranking_sizes(inputs["slot_index"], inputs["ranks"]),
    )
    return scores_on_grid(flat, inputs["slot_index"], inputs["ranks"])


class RankingTrainer(Trainer):
    """`shared_prompt_forward`: run each ranking's completions behind one copy of its prompt where the model's
    check passes (decided at the first batch, when the model is in the engine that every rank runs)."""

    def __init__(self, *args, shared_prompt_forward: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_prompt_forward = shared_prompt_forward
        self.shared_prompt: SharedPromptSupport | None = None

    def shared_prompt_support(self, model) -> SharedPromptSupport:
        if self.shared_prompt is None:
            self.shared_prompt = reward_model_support(model, across_ranks=True) if self.shared_prompt_forward else OFF
            if self.shared_prompt_forward and not self.shared_prompt.enabled and distributed.is_main_process():
                print(self.shared_prompt.line("reward model"), flush=True)
        return self.shared_prompt

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = ranking_rewards(model, inputs, self.shared_prompt_support(model))
        loss = kway_ranking_loss(rewards.float(), inputs["ranks"])
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = _compat.prepare_trainer_inputs(self, inputs)
        with torch.no_grad():
            rewards = ranking_rewards(model, inputs, self.shared_prompt_support(model)).float()
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
