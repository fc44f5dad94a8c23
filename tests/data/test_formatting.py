"""What the reward model reads has one owner (rlhf.data.formatting.reward_input_ids): the ids PPO scores for a
response are the ids the RM stage trained on for the same text, for every tokenizer shape we meet."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.formatting import demonstration_ids, prompt_token_ids, response_text, reward_input_ids
from rlhf.data.rankings import Ranking
from rlhf.demo.task import corpus_words
from rlhf.ppo.experience import reward_inputs, tokenize_prompts
from rlhf.ppo.rewards import response_mask_after_eos
from rlhf.rm.batches import tokenize_rankings
from tests.helpers.architectures import family_tokenizer, llama3_stop_ids

SHAPES = ("llama3", "qwen2", "gpt2", "opt", "gpt_neox", "mistral", "chat_bpe")
TEXT_PROMPTS = ["sort these words : cat dog answer :", "reverse these words : owl fox bear answer :"]
CHAT_PROMPTS = [
    [
        {"role": "user", "content": "sort cat dog"},
        {"role": "assistant", "content": "cat dog"},
        {"role": "user", "content": "reverse owl fox"},
    ],
    [{"role": "system", "content": "answer"}, {"role": "user", "content": "first of bear owl"}],
]
COMPLETIONS = [" dog cat", "fox owl bear"]  # one with the leading space TRL's convention puts there, one without


def tokenizer_of(shape: str):
    """A tokenizer of `shape` with a pad token (EOS where the family has none, as rlhf.models.load_tokenizer
    does), and the ids that end its responses."""
    if shape == "chat_bpe":
        from rlhf.demo.chat import build_chat_tokenizer

        words = " ".join([*corpus_words(), "sort", "reverse", "first", "of", "answer"])
        tokenizer = build_chat_tokenizer([words] * 4, vocab_size=400)
    else:
        tokenizer = family_tokenizer(shape, corpus_words())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stops = tuple(llama3_stop_ids(tokenizer)) if shape == "llama3" else (tokenizer.eos_token_id,)
    return tokenizer, stops


def prompts_of(tokenizer):
    return [TEXT_PROMPTS] + ([CHAT_PROMPTS] if tokenizer.chat_template else [])


def rollout(tokenizer, stops, prompts, responses):
    """What PPO holds after generation: left-padded prompts, and responses padded after their stop token."""
    batch = tokenize_prompts(tokenizer, prompts)
    width = max(len(ids) for ids in responses) + 2
    response_ids = torch.full((len(responses), width), tokenizer.pad_token_id)
    for row, ids in enumerate(responses):
        response_ids[row, : len(ids)] = torch.tensor(ids)
    return batch, response_ids, response_mask_after_eos(response_ids, stops, tokenizer.pad_token_id)


@pytest.mark.parametrize("shape", SHAPES)
def test_ppo_scores_the_ids_the_rm_stage_trained_on(shape):
    tokenizer, stops = tokenizer_of(shape)
    for prompts in prompts_of(tokenizer):
        # What the SFT stage trained the policy to write for each completion: PPO's generated ids.
        written = [
            demonstration_ids(tokenizer, prompt, completion, stops)[0][len(prompt_token_ids(tokenizer, prompt)) :]
            for prompt, completion in zip(prompts, COMPLETIONS)
        ]
        batch, response_ids, mask = rollout(tokenizer, stops, prompts, written)
        scored = reward_inputs(tokenizer, tokenizer, batch, response_ids, mask, 10**6, stops, stops)
        # The RM stage, on the completions as a labeling export or a data set holds them ...
        rankings = [
            Ranking(f"r{i}", prompt, (completion, " cat"), (1, 2))
            for i, (prompt, completion) in enumerate(zip(prompts, COMPLETIONS))
        ]
        trained = [feature["input_ids"][0] for feature in tokenize_rankings(rankings, tokenizer, stops)]
        assert scored == trained, tokenizer.convert_ids_to_tokens(scored[0])
        # ... and on the policy's own samples, decoded in context as label sampling writes them.
        decoded = [
            response_text(tokenizer, prompt_token_ids(tokenizer, prompt), ids) for prompt, ids in zip(prompts, written)
        ]
        assert [
            reward_input_ids(tokenizer, p, text, stop_token_ids=stops) for p, text in zip(prompts, decoded)
        ] == scored
        for ids in scored:
            assert ids[-1] in stops  # each read through the end of its response


def test_a_response_cut_at_max_new_tokens_reads_with_eos_in_both():
    tokenizer, stops = tokenizer_of("chat_bpe")
    prompt = CHAT_PROMPTS[0]
    cut = tokenizer("owl fox bear", add_special_tokens=False)["input_ids"]  # no stop token: max_new_tokens hit
    batch, response_ids, mask = rollout(tokenizer, stops, [prompt], [cut])
    (scored,) = reward_inputs(tokenizer, tokenizer, batch, response_ids, mask, 10**6, stops, stops)
    assert scored == prompt_token_ids(tokenizer, prompt) + cut + [tokenizer.eos_token_id]


def test_no_space_is_slipped_in_before_a_reply_that_has_none():
    """The bug this owner fixed: the RM stage trained on `<|assistant|>` + `ĠGreat` while the policy writes `Great`."""
    tokenizer, stops = tokenizer_of("chat_bpe")
    prompt = [{"role": "user", "content": "sort cat dog"}]
    ids = reward_input_ids(tokenizer, prompt, "cat dog", stop_token_ids=stops)
    after_prompt = tokenizer.convert_ids_to_tokens(ids[len(prompt_token_ids(tokenizer, prompt)) :])
    assert after_prompt == ["cat", "Ġdog", "<|end|>"]


def test_a_reward_model_with_another_tokenizer_reads_what_its_own_stage_trained_on():
    """PPO decodes the policy's response in context and the reward model reads it as its RM stage read the same
    text: a word-level Llama-3 policy scored by a byte-level BPE reward model."""
    policy_tokenizer, policy_stops = tokenizer_of("llama3")
    reward_tokenizer, reward_stops = tokenizer_of("chat_bpe")
    prompts = CHAT_PROMPTS
    written = [
        demonstration_ids(policy_tokenizer, p, c, policy_stops)[0][len(prompt_token_ids(policy_tokenizer, p)) :]
        for p, c in zip(prompts, COMPLETIONS)
    ]
    batch, response_ids, mask = rollout(policy_tokenizer, policy_stops, prompts, written)
    scored = reward_inputs(
        policy_tokenizer, reward_tokenizer, batch, response_ids, mask, 10**6, policy_stops, reward_stops
    )
    texts = [
        response_text(policy_tokenizer, prompt_token_ids(policy_tokenizer, p), ids) for p, ids in zip(prompts, written)
    ]
    assert texts == [" dog cat", " fox owl bear"]  # the word-level decoder joins words with spaces
    rankings = [Ranking(f"r{i}", p, (text, " cat"), (1, 2)) for i, (p, text) in enumerate(zip(prompts, texts))]
    assert scored == [f["input_ids"][0] for f in tokenize_rankings(rankings, reward_tokenizer, reward_stops)]
