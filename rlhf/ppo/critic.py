"""The critic: a reward model read at every token, giving V(s_t) for each prefix.

InstructGPT (§3.5) initialises the value function from the reward model. A sequence-classification model
applies its scalar head to every position and then keeps only the last real one; the critic calls the same
body and head itself and keeps them all. The body and head are called as modules (not through hooks), so that
ZeRO-3 gathers their parameters for the forward and again for the backward; with LoRA, peft has put its
layers inside the body and a trainable copy of the head in the head's place, so the same calls serve.
"""

from __future__ import annotations

import torch
from torch import nn

from rlhf.adaptation.apply import is_peft_model, reward_head_names


class TokenValueModel(nn.Module):
    """V(s_t) for every position of (B, L) inputs: the reward model's head applied to every hidden state,
    minus `value_offset`.

    PPO's rewards are the reward model's scores minus its normalisation offset (`reward_normalization.json`),
    so a critic started from the raw model would be off by that offset at every token; until the clipped value
    loss had removed it (at most cliprange_value per rollout) the advantages of the last tokens would be biased.
    Subtracting the same offset starts the critic on the rewards' scale. It is a constant of the module, not a
    weight: a resumed critic is built with it again and loads the trained weights under it.
    """

    def __init__(self, reward_model: nn.Module, value_offset: float = 0.0):
        super().__init__()
        self.model = reward_model
        self.value_offset = float(value_offset)
        inner = reward_model.get_base_model() if is_peft_model(reward_model) else reward_model
        head_names = reward_head_names(inner)
        if len(head_names) != 1:
            raise ValueError(f"a critic needs exactly one scalar head; {type(inner).__name__} has {head_names}")
        self._body_name, self._head_name = inner.base_model_prefix, head_names[0]

    def _inner(self) -> nn.Module:
        return self.model.get_base_model() if is_peft_model(self.model) else self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inner = self._inner()
        # No KV cache: nothing follows this forward, and with a cache transformers takes a packed batch
        # (`packing`) for one sequence being continued.
        hidden = getattr(inner, self._body_name)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return getattr(inner, self._head_name)(hidden)[..., 0].float() - self.value_offset  # (B, L)
