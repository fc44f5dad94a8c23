"""The `overlong` policy: what each of drop, truncate and error does to examples over a length limit, worked out
by hand on the demo's word-level tokenizer (one token per word) and on a byte-level BPE chat tokenizer."""

from __future__ import annotations

import json

import pytest

from rlhf.data.formatting import prompt_token_ids
from rlhf.data.overlong import fit, fit_demonstrations, fit_prompts, fit_rankings, shortened_prompt, write_overlong
from rlhf.data.rankings import Ranking
from rlhf.errors import DataError


@pytest.fixture(scope="module")
def words():
    """The demo's tokenizer: a word is a token, BOS first; its chat template writes `role : content` per turn."""
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer

    return build_tokenizer(corpus_words())


def lengths(items, max_tokens, policy, shorten=lambda item: (None, "cannot")):
    return fit(
        enumerate(items, start=1),
        length=len,
        max_tokens=max_tokens,
        shorten=shorten,
        policy=policy,
        what="demonstrations",
        limit=f"max_length {max_tokens}",
        file="d.jsonl",
    )


def test_drop_keeps_what_fits_and_counts_the_rest():
    fitted = lengths(["abc", "abcdefghij", "abcde"], 6, "drop")
    assert fitted.kept == ["abc", "abcde"] and fitted.total == 3 and fitted.over == 1
    assert fitted.dropped == [{"record": 2, "tokens": 10, "reason": "over the limit"}]
    assert fitted.summary("sft/overlong.jsonl") == (
        "1 of 3 demonstrations are over max_length 6: 1 dropped (ids in sft/overlong.jsonl)"
    )
    assert fitted.metrics("train_overlong") == {
        "train_overlong_total": 3,
        "train_overlong_over": 1,
        "train_overlong_dropped": 1,
        "train_overlong_truncated": 0,
    }
    assert lengths(["ab", "cd"], 6, "drop").summary("x") == ""  # nothing over: nothing to say


def test_error_names_how_many_are_over_and_the_first():
    with pytest.raises(DataError) as error:
        lengths(["abc", "abcdefghij", "abcde", "abcdefg"], 6, "error")
    assert str(error.value) == (
        "d.jsonl: 2 of 4 demonstrations are over max_length 6 (the first: record 2, 10 "
        "tokens); set overlong: drop or truncate to go on without them"
    )


def test_truncate_shortens_what_it_can_and_drops_what_it_cannot():
    def shorten(item):
        return (item[-6:], "") if item.startswith("x") else (None, "the completion alone fills the limit")

    fitted = lengths(["abc", "xxxxxxxxxabc", "abcdefghij"], 6, "truncate", shorten)
    assert fitted.kept == ["abc", "xxxabc"]
    assert fitted.truncated == [{"record": 2, "tokens": 12, "tokens_after": 6}]
    assert fitted.dropped == [{"record": 3, "tokens": 10, "reason": "the completion alone fills the limit"}]
    assert fitted.summary("f") == (
        "2 of 3 demonstrations are over max_length 6: 1 truncated (prompt shortened from "
        "the left), 1 dropped (records in f)"
    )


def test_nothing_fitting_is_an_error_whatever_the_policy():
    for policy in ("drop", "truncate"):
        with pytest.raises(
            DataError,
            match=r"d.jsonl: none of the 2 demonstrations fits max_length 3 \(the longest "
            r"is 9 tokens\); raise the limit",
        ):
            lengths(["abcdefghi", "abcdefg"], 3, policy)


def test_a_conversation_loses_its_earliest_turns_first_keeping_the_system_message(words):
    system = {"role": "system", "content": "sort"}
    turns = [
        {"role": "user", "content": "cat dog owl"},
        {"role": "assistant", "content": "dog"},
        {"role": "user", "content": "fox"},
        {"role": "assistant", "content": "owl"},
        {"role": "user", "content": "bear cat"},
    ]
    prompt = [system, *turns]
    # <s> | system : sort | user : cat dog owl | assistant : dog </s> | user : fox | assistant : owl </s> |
    # user : bear cat | assistant :  ->  1 + 3 + 5 + 4 + 3 + 4 + 4 + 2 = 26 tokens
    assert len(prompt_token_ids(words, prompt)) == 26
    # 26 - 9 (the first user turn and its reply) = 17: the next user turn starts what is kept.
    assert shortened_prompt(words, prompt, 17) == [system, *turns[2:]]
    assert shortened_prompt(words, prompt, 16) == [system, turns[4]]  # 26 - 16: only the last question is left
    assert shortened_prompt(words, prompt, 26) == prompt
    # The last turn alone is too long: its text is cut at a word boundary from the left.
    assert shortened_prompt(words, prompt, 9) == [system, {"role": "user", "content": "cat"}]
    assert shortened_prompt(words, prompt, 8) is None  # not even one word of it fits


def test_text_is_cut_at_the_latest_line_start_that_fits_else_a_word(words):
    prompt = "cat dog\nowl fox bear\nsort these words : cat answer :"
    assert len(prompt_token_ids(words, prompt)) == 1 + 2 + 3 + 7  # BOS and one token per word
    assert shortened_prompt(words, prompt, 11) == "owl fox bear\nsort these words : cat answer :"
    assert shortened_prompt(words, prompt, 10) == "sort these words : cat answer :"
    assert shortened_prompt(words, prompt, 8) == "sort these words : cat answer :"
    assert shortened_prompt(words, prompt, 5) == ": cat answer :"  # no line fits: words
    assert shortened_prompt(words, prompt, 0) is None


def test_demonstrations_rankings_and_prompts_are_measured_as_the_stages_read_them(words):
    long_prompt = " ".join(["cat"] * 20) + "\nsort these words : dog answer :"
    demonstrations = [
        {"prompt": "sort : dog answer :", "completion": " dog"},  # 1 + 4 + 1 + EOS = 7
        {"prompt": long_prompt, "completion": " dog"},  # 1 + 27 + 1 + 1 = 30
        {"prompt": "cat", "completion": " dog" * 12},
    ]  # the completion leaves no room
    fitted = fit_demonstrations(demonstrations, words, max_length=12, policy="truncate", file="d.jsonl")
    assert fitted.kept == [demonstrations[0], {"prompt": "sort these words : dog answer :", "completion": " dog"}]
    assert [row["record"] for row in fitted.truncated] == [2] and fitted.truncated[0]["tokens"] == 30
    assert fitted.dropped == [{"record": 3, "tokens": 15, "reason": "the completion alone fills the limit"}]

    rankings = [
        Ranking("short", "sort : dog answer :", (" dog", " cat owl"), (1, 2)),
        Ranking("long", long_prompt, (" dog", " cat"), (1, 2)),
    ]
    fitted = fit_rankings(rankings, words, max_length=12, policy="drop", file="r.jsonl")
    assert [r.id for r in fitted.kept] == ["short"] and fitted.dropped[0]["record"] == "long"

    fitted = fit_prompts(
        ["sort : dog answer :", long_prompt],
        words,
        max_tokens=10,
        setting="max_prompt_length",
        policy="drop",
        file="p.jsonl",
    )
    assert fitted.kept == ["sort : dog answer :"]
    assert fitted.summary() == "1 of 2 prompts are over max_prompt_length 10: 1 dropped"


def test_the_records_left_out_are_listed_beside_the_outputs(tmp_path):
    fitted = lengths(["abc", "abcdefghij"], 6, "drop")
    assert write_overlong(tmp_path / "overlong.jsonl", [("d.jsonl", fitted)]) == 1
    rows = [json.loads(line) for line in (tmp_path / "overlong.jsonl").read_text().splitlines()]
    assert rows == [
        {
            "file": "d.jsonl",
            "record": 2,
            "tokens": 10,
            "reason": "over the limit",
            "what": "demonstrations",
            "action": "dropped",
        }
    ]
    assert write_overlong(tmp_path / "none.jsonl", [("d.jsonl", lengths(["ab"], 6, "drop"))]) == 0
    assert not (tmp_path / "none.jsonl").exists()


def test_fewer_held_out_prompts_than_asked_for_is_said():
    from rlhf.ppo.inputs import held_out_prompts

    fitted = lengths(["ab", "abcdefghij", "abc"], 6, "drop")
    assert held_out_prompts(fitted, 2) == (["ab", "abc"], "")
    assert held_out_prompts(fitted, 16) == (
        ["ab", "abc"],
        "evaluating on 2 prompts, not the 16 of eval_prompts: "
        "the file holds 3, after 1 over max_length 6 were left out",
    )


def test_ptx_reads_chat_demonstrations_and_text_fitted_to_ptx_max_length(words, tmp_path):
    from types import SimpleNamespace

    from rlhf.data.formatting import demonstration_ids
    from rlhf.ppo.inputs import ptx_examples

    chat = [
        {"messages": [{"role": "user", "content": "sort dog cat"}, {"role": "assistant", "content": "cat dog"}]},
        {"messages": [{"role": "user", "content": "cat " * 30}, {"role": "assistant", "content": "cat"}]},
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    config = SimpleNamespace(ptx_file=str(tmp_path / "chat.jsonl"), ptx_max_length=16, overlong="drop")
    name, file, fitted = ptx_examples(config, words, (words.eos_token_id,))
    assert (name, file, len(fitted.kept), fitted.over) == ("ptx", config.ptx_file, 1, 1)
    prompt, completion = chat[0]["messages"][:1], chat[0]["messages"][1:]
    assert fitted.kept == [demonstration_ids(words, prompt, completion, (words.eos_token_id,))]
    assert fitted.summary() == "1 of 2 demonstrations are over ptx_max_length 16: 1 dropped"

    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "cat dog " * 10}) + "\n")
    config = SimpleNamespace(ptx_file=str(tmp_path / "text.jsonl"), ptx_max_length=8, overlong="truncate")
    _, _, fitted = ptx_examples(config, words, (words.eos_token_id,))
    ((ids, mask),) = fitted.kept
    assert ids == words("cat dog " * 10)["input_ids"][:8] and mask == [1] * 8
    assert fitted.truncated == [{"record": 1, "tokens": 21, "tokens_after": 8}]


def test_a_chat_template_that_refuses_a_conversation_names_the_record(words):
    from copy import deepcopy

    strict = deepcopy(words)
    strict.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "{{ m['content'] }} {% endfor %}"
    )
    prompts = [[{"role": "user", "content": "cat"}], [{"role": "assistant", "content": "dog"}]]
    with pytest.raises(
        DataError,
        match=r"^p.jsonl: record 2: field 'prompt': .*\(its chat template\): the chat "
        r"template failed: Conversation roles must alternate user/assistant$",
    ):
        fit_prompts(prompts, strict, max_tokens=10, setting="max_prompt_length", policy="drop", file="p.jsonl")
