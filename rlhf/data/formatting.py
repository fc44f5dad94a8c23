"""How a prompt and a response become model input: the one owner of what the policy writes and what the reward
model reads.

The policy's response to a prompt is the token ids it writes after the prompt's ids, ending in one of its stop
tokens. Every stage agrees on those ids for the same (prompt, response text):
- SFT trains the policy on them (`demonstration_ids`), tokenized in context as TRL's SFTTrainer does: prompt and
  completion as one text, or the chat template over the prompt and the assistant's reply;
- the reward model trains on the prompt's ids + those ids (`reward_input_ids`), and PPO scores the ids the policy
  generated through the same function, so that the reward model scores exactly what it was trained on;
- a generated response becomes text by decoding it in context (`response_text`), which `response_ids` turns back
  into the same ids: labels sampled from the policy and ranked by people train the reward model on the tokens the
  policy wrote.
Other rules written once: a chat template already holds the BOS token (`adds_special_tokens`), and generation wants
prompts padded on the left (`padding_side`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.data.chat_template import apply_chat_template

Prompt = Any  # str, or a list of chat messages
Completion = Any  # str, or a one-message list [{"role": "assistant", "content": ...}] (chat demonstrations)


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
        return tokenizer(
            [prompt_text(tokenizer, prompt) for prompt in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=adds_special_tokens(prompts[0]),
        )


def completion_content(completion: Completion) -> str:
    """A completion's text: a string as is, a chat demonstration's one assistant message by its content."""
    if isinstance(completion, list):
        return completion[-1]["content"]
    return completion


def is_text(response: Any) -> bool:
    """Whether a response is text (a string, or a chat demonstration's message list) rather than token ids."""
    return isinstance(response, str) or (
        isinstance(response, list) and bool(response) and isinstance(response[0], dict)
    )


def end_of_response(tokenizer, stop_token_ids: Sequence[int]) -> tuple[set[int], int | None]:
    """(the ids that end a response, the one appended to a response that has none): every stop token and EOS."""
    eos = tokenizer.eos_token_id
    return set(stop_token_ids) | ({eos} if eos is not None else set()), eos


def ended(response_ids: Sequence[int], tokenizer, stop_token_ids: Sequence[int] = ()) -> list[int]:
    """`response_ids` cut after their first stop token, or with EOS appended when they hold none (a response cut at
    max_new_tokens, a text completion): the reward model reads every response with its end marked."""
    stops, eos = end_of_response(tokenizer, stop_token_ids)
    ids = list(response_ids)
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1]
    return ids + [eos] if eos is not None else ids


def response_ids(tokenizer, prompt: Prompt, completion: Completion, stop_token_ids: Sequence[int] = ()) -> list[int]:
    """The ids the policy writes for `completion` after `prompt`, ending in a stop token.

    Tokenized in context, as the SFT stage trained the policy: the prompt's text and the completion as one text
    (a text prompt; no separator is added: TRL's convention is that a completion carries its own leading space),
    or the chat template over the prompt and the assistant's reply, which writes the end of the turn. The prompt's
    ids are then taken off. Where tokens merge across the boundary (the prompt's ids are not a prefix), the
    completion is tokenized alone, as the policy would have to write it after the prompt's ids.
    """
    content = completion_content(completion)
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    if isinstance(prompt, list):
        whole = tokenizer(
            apply_chat_template(tokenizer, prompt + [{"role": "assistant", "content": content}], tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
    else:
        whole = tokenizer(prompt + content)["input_ids"]
    if whole[: len(prompt_ids)] == prompt_ids:
        tail = whole[len(prompt_ids) :]
    else:
        tail = tokenizer(content, add_special_tokens=False)["input_ids"]
    return ended(tail, tokenizer, stop_token_ids)


def response_text(tokenizer, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> str:
    """A generated response as text, decoded in context so that `response_ids` gives its ids back.

    Decoded alone, a response loses what its first token owes to the prompt (a word-joining space, SentencePiece's
    leading "▁"); decoded after the prompt and cut where the prompt's text ends, it keeps it. Special tokens (EOS,
    the end of a turn) are left out.
    """
    options = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    prompt_part = tokenizer.decode(list(prompt_ids), **options)
    whole = tokenizer.decode(list(prompt_ids) + list(response_ids), **options)
    if whole.startswith(prompt_part):
        return whole[len(prompt_part) :]
    return tokenizer.decode(list(response_ids), **options)


def reward_input_ids(
    tokenizer,
    prompt: Prompt,
    response: Completion | Sequence[int],
    *,
    stop_token_ids: Sequence[int] = (),
    prompt_ids: Sequence[int] | None = None,
) -> list[int]:
    """What the reward model reads for a prompt and a response: the prompt's ids, then the response's ids ending in
    a stop token (EOS appended to a response without one).

    `response` is text (a completion from the rankings, a decoded sample), or the ids the policy generated, which
    are used as they are. The RM stage, PPO's scoring, the evaluations and the labels all call this, so that the
    reward model scores the tokens it was trained on. `prompt_ids` saves tokenizing the prompt again.
    """
    if prompt_ids is None:
        prompt_ids = prompt_token_ids(tokenizer, prompt)
    if is_text(response):
        ids = response_ids(tokenizer, prompt, response, stop_token_ids)
    else:
        ids = ended([int(token) for token in response], tokenizer, stop_token_ids)
    return list(prompt_ids) + ids


def demonstration_ids(
    tokenizer, prompt: Prompt, completion: Completion, stop_token_ids: Sequence[int] = ()
) -> tuple[list[int], list[int]]:
    """(input ids, completion mask) of a demonstration as the SFT stage trains on it: the prompt's ids (mask 0),
    then the response's ids through its stop token (mask 1). The same ids as `reward_input_ids` gives the reward
    model for the same pair."""
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    ids = response_ids(tokenizer, prompt, completion, stop_token_ids)
    return prompt_ids + ids, [0] * len(prompt_ids) + [1] * len(ids)
