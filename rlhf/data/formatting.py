"""How a prompt and a response become model input, in one place for the policy and the reward model.

The reward model must see exactly the text it was trained on when PPO scores a response, so every stage
builds its inputs here. The rules written once: a chat template already holds the BOS token
(`adds_special_tokens`), generation wants prompts padded on the left (`padding_side`), and a completion is
appended with a leading separator (`response_text`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from rlhf.data.chat_template import apply_chat_template

Prompt = Any  # str, or a list of chat messages


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """The text a model continues: a plain prompt as is, chat messages through the chat template."""
    if isinstance(prompt, list):
        return apply_chat_template(tokenizer, prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def adds_special_tokens(prompt: Prompt) -> bool:
    """Whether the tokenizer should add its special tokens (BOS) to a prompt's text.

    A chat template already writes the BOS token into the text, so a chat prompt must not get a second one.
    """
    return not isinstance(prompt, list)


def prompt_token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """The token ids a model sees for a prompt, BOS included exactly once."""
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=adds_special_tokens(prompt))["input_ids"]


@contextlib.contextmanager
def padding_side(tokenizer, side: str) -> Iterator[Any]:
    """The tokenizer padding on `side` ("left" for generation, "right" for scoring) for the block only."""
    saved, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = saved


def encode_prompts(tokenizer, prompts: Sequence[Prompt]):
    """A left-padded batch (`input_ids`, `attention_mask` tensors) of prompts, as `generate` wants them.

    The prompts of one batch are all text or all chat (the first one decides how BOS is handled).
    """
    with padding_side(tokenizer, "left"):
        return tokenizer([prompt_text(tokenizer, prompt) for prompt in prompts], return_tensors="pt", padding=True,
                         add_special_tokens=adds_special_tokens(prompts[0]))


def response_text(completion: str) -> str:
    """A response as appended to its prompt: TRL's convention is a leading separator in the completion."""
    return completion if completion[:1].isspace() else " " + completion


def reward_input_ids(tokenizer, prompt: Prompt, completion: str, max_length: int) -> list[int]:
    """Token ids of prompt + completion + EOS for the reward model, cut from the left to `max_length`.

    The score is read at the last token, so a long input loses the start of its prompt, never the
    end of its response.
    """
    text = prompt_text(tokenizer, prompt) + response_text(completion)
    ids = tokenizer(text, add_special_tokens=adds_special_tokens(prompt))["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids[-max_length:]
