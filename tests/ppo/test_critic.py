"""rlhf.ppo.critic: the value model reads the reward head at every position."""

from __future__ import annotations

import torch


def test_critic_values_are_the_reward_heads_output_at_every_position(tiny_reward_model):
    from rlhf.ppo.critic import TokenValueModel

    tiny_reward_model.eval()
    critic = TokenValueModel(tiny_reward_model)
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    attention_mask = torch.ones_like(input_ids)
    values = critic(input_ids, attention_mask)
    assert values.shape == (2, 4)
    # The sequence classifier's score is the head at the last real token: the critic's last value.
    scores = tiny_reward_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    torch.testing.assert_close(values[:, -1], scores)
    # ...and every prefix has its own value: V(s_t) for the prefix input_ids[:, :t+1].
    prefix_scores = tiny_reward_model(input_ids=input_ids[:, :2], attention_mask=attention_mask[:, :2]).logits[:, 0]
    torch.testing.assert_close(values[:, 1], prefix_scores)
