"""How a prompt and a response become model input, in one place for the policy and the reward model.

The reward model must see exactly the text it was trained on when PPO scores a response, so both
stages build inputs here.
"""

from __future__ import annotations

from typing import Any

Prompt = Any  # str, or a list of chat messages


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """The text a model continues: a plain prompt as is, chat messages through the chat template."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def response_text(completion: str) -> str:
    """A response as appended to its prompt: TRL's convention is a leading separator in the completion."""
    return completion if completion[:1].isspace() else " " + completion


def reward_input_ids(tokenizer, prompt: Prompt, completion: str, max_length: int) -> list[int]:
    """Token ids of prompt + completion + EOS for the reward model, cut from the left to `max_length`.

    The score is read at the last token, so a long input loses the start of its prompt, never the
    end of its response.
    """
    text = prompt_text(tokenizer, prompt) + response_text(completion)
    ids = tokenizer(text, add_special_tokens=not isinstance(prompt, list))["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids[-max_length:]
