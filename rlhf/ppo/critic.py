"""The critic: a reward model read at every token, giving V(s_t) for each prefix.

InstructGPT (§3.5) initialises the value function from the reward model. A sequence-classification model
already computes its scalar head on every position and then keeps only the last real one; the critic keeps
them all. A forward hook on the head reads them, so the same code serves a plain model and a peft-wrapped one
(peft puts a trainable copy of the head in place of the original module).
"""

from __future__ import annotations

import torch
from torch import nn

from rlhf.adaptation.apply import is_peft_model, reward_head_names


class TokenValueModel(nn.Module):
    """V(s_t) for every position of (B, L) inputs: the reward model's head applied to every hidden state."""

    def __init__(self, reward_model: nn.Module):
        super().__init__()
        self.model = reward_model
        inner = reward_model.get_base_model() if is_peft_model(reward_model) else reward_model
        head_names = reward_head_names(inner)
        if len(head_names) != 1:
            raise ValueError(f"a critic needs exactly one scalar head; {type(inner).__name__} has {head_names}")
        self._head = getattr(inner, head_names[0])
        self._captured: list[torch.Tensor] = []
        self._head.register_forward_hook(lambda module, inputs, output: self._captured.append(output))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        self._captured.clear()
        self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        per_token = self._captured.pop()
        self._captured.clear()
        return per_token[..., 0].float()  # (B, L)
