"""The vLLM rollout engine (rlhf/rollout/, rlhf/ppo/rollouts.py) against the training actor, on the CPU build of
vLLM: weights really sync (full and LoRA), sampling is exactly the stage's whatever the checkpoint ships, and an
architecture vLLM lacks is one line. Starting an engine takes ~15 s on 2 cores, so each model's engine is started
once per module and shared. The models are tiny but have head_dim 32, the smallest vLLM's CPU attention runs.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhf.demo.task import corpus_words
from tests.helpers.architectures import build_family_model, llama3_stop_ids
from tests.helpers.ppo_setup import engines_for

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# float32 on both sides; measured: ~1e-7 after a sync, ~1e-1 when one update was not synced.
SYNCED_TOLERANCE = 1e-4
MAX_LENGTH = 48  # prompt + response tokens the engines hold
ROLLOUT = dict(max_prompt_length=40, max_new_tokens=8, actor_learning_rate=5e-2, rollout_engine="vllm")


@pytest.fixture(scope="module")
def models(models_64):
    """Every test here runs on the hidden-size-64 models."""
    return models_64


@pytest.fixture(scope="module")
def policy_engine(models):
    """One engine on the policy's shape, started with random weights: every test syncs its actor in first."""
    from rlhf.rollout.sampling import start_engine

    engine = start_engine(models["policy"], max_model_len=MAX_LENGTH, max_num_seqs=16, dummy_weights=True)
    yield engine.wait_ready()
    engine.close()


def _rollouts(engine, inputs, config):
    from rlhf.generation import stop_token_ids
    from rlhf.ppo.logprobs import sampling_settings_for
    from rlhf.ppo.rollouts import VLLMRollouts

    tokenizer = inputs.tokenizer
    sampling = sampling_settings_for(
        tokenizer, config.temperature, config.top_k, config.top_p, config.max_new_tokens, stop_token_ids(tokenizer)
    )
    return VLLMRollouts(engine, sampling, tokenizer), sampling


def _largest_gap(rollouts, sampling, engines, inputs, step: int) -> float:
    """max |log π_engine − log π_actor| over the response tokens the engine sampled for step `step`'s prompts."""
    from rlhf.ppo import experience

    batch = experience.tokenize_prompts(inputs.tokenizer, inputs.prompts_for_step(step))
    response_ids, engine_logprobs = rollouts.generate(engines.actor, batch, (0, "test", step))
    rollout = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 10_000)
    mask = rollout.response_mask.bool()
    assert mask.sum() >= 8
    return (engine_logprobs - rollout.logprobs)[mask].abs().max().item()


def _update(actor, inputs, step: int) -> None:
    """One optimiser step of the actor that moves its distribution far (towards one word)."""
    from rlhf.ppo import experience

    batch = experience.tokenize_prompts(inputs.tokenizer, inputs.prompts_for_step(step))
    logits = actor(input_ids=batch.query_ids, attention_mask=batch.query_mask).logits
    loss = -torch.log_softmax(logits.float(), dim=-1)[..., 5].mean()
    actor.backward(loss)
    actor.step()


def _after_updates_then_a_skipped_sync(engine, engines, config, inputs, updates: int = 2) -> None:
    rollouts, sampling = _rollouts(engine, inputs, config)
    rollouts.sync(engines.actor)
    assert _largest_gap(rollouts, sampling, engines, inputs, 0) < SYNCED_TOLERANCE
    for step in range(updates):
        _update(engines.actor, inputs, step)
        rollouts.sync(engines.actor)
    assert _largest_gap(rollouts, sampling, engines, inputs, updates) < SYNCED_TOLERANCE
    # One update the engine never got: the same check must fail.
    _update(engines.actor, inputs, updates)
    assert _largest_gap(rollouts, sampling, engines, inputs, updates + 1) > 100 * SYNCED_TOLERANCE


def test_after_each_update_the_engine_samples_the_actors_distribution_and_a_skipped_sync_shows(
    models, policy_engine, tmp_path
):
    config, inputs, engines = engines_for(models, tmp_path, **ROLLOUT)
    _after_updates_then_a_skipped_sync(policy_engine, engines, config, inputs)


def test_a_lora_actor_syncs_its_merged_weights(models, policy_engine, tmp_path):
    config, inputs, engines = engines_for(models, tmp_path, adaptation_method="lora", lora_r=4, **ROLLOUT)
    assert engines.reference is None  # the adapter-disabled actor is the reference: nothing else to sync from
    _after_updates_then_a_skipped_sync(policy_engine, engines, config, inputs)


def test_the_same_seeds_give_the_same_samples_whatever_the_batch(models, policy_engine, tmp_path):
    from rlhf.rollout.sampling import sampling_for, seed_of

    config, inputs, engines = engines_for(models, tmp_path, **ROLLOUT)
    rollouts, _ = _rollouts(policy_engine, inputs, config)
    rollouts.sync(engines.actor)
    prompt = [1, 7, 8, 9]
    settings = sampling_for(inputs.tokenizer, max_new_tokens=8, stop_token_ids=(2,))
    alone = policy_engine.generate([prompt], settings, [seed_of(3)])
    among_others = policy_engine.generate([[1, 5], prompt, [1, 6, 6]], settings, [seed_of(1), seed_of(3), seed_of(2)])
    assert among_others[1] == alone[0]
    others = policy_engine.generate([prompt] * 4, settings, [seed_of(i) for i in range(10, 14)])
    assert len({tuple(ids) for ids, _ in others}) > 1


@pytest.fixture(scope="module")
def llama3_engine(tmp_path_factory):
    """Llama 3's conventions: a generation_config.json with temperature 0.6, top_k 3, top_p 0.9,
    repetition_penalty 1.8, no_repeat_ngram_size 1, max_new_tokens 2 and three EOS ids."""
    from rlhf.rollout.sampling import start_engine

    path = build_family_model(tmp_path_factory.mktemp("llama3"), "llama3", corpus_words(), hidden=64)
    engine = start_engine(str(path), max_model_len=MAX_LENGTH, max_num_seqs=64)
    yield path, engine.wait_ready()
    engine.close()


def _reference_logprobs(model, prompt, response, *, temperature=1.0, top_k=0):
    """log-probabilities of `response` under `model` after `prompt`: the tempered softmax, top-k truncated when
    asked (what vLLM's processed log-probabilities are)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_sampling_is_the_stages_and_every_stop_id_ends_a_response_whatever_the_checkpoint_ships(llama3_engine):
    from transformers import AutoModelForCausalLM

    from rlhf.generation import stop_token_ids
    from rlhf.models import load_tokenizer
    from rlhf.rollout.sampling import sampling_for, seed_of

    path, engine = llama3_engine
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(str(path))
    stops = stop_token_ids(tokenizer, model)
    assert stops == tuple(llama3_stop_ids(tokenizer))
    words = tokenizer.convert_tokens_to_ids(["owl", "dog", ":"])
    prompts = [[tokenizer.bos_token_id, *words[:n]] for n in (1, 2, 3)] * 16
    settings = sampling_for(tokenizer, max_new_tokens=16, stop_token_ids=stops, logprobs=True)
    answers = engine.generate(prompts, settings, [seed_of("stops", i) for i in range(len(prompts))])

    ended_by = set()
    for prompt, (response, logprobs) in zip(prompts, answers):
        # Only the last token may be a stop, and a response shorter than max_new_tokens ended on one.
        assert not set(response[:-1]) & set(stops)
        if len(response) < 16:
            ended_by.add(response[-1])
        # Our temperature 1 and no top-k, top-p or repetition penalty: the actor's full tempered softmax.
        torch.testing.assert_close(
            torch.tensor(logprobs), _reference_logprobs(model, prompt, response), atol=SYNCED_TOLERANCE, rtol=0
        )
    assert ended_by == set(stops)  # each of the three EOS ids ends some response
    assert max(len(response) for response, _ in answers) > 2  # the shipped max_new_tokens 2 is not read
    assert any(len(set(response)) < len(response) for response, _ in answers)  # nor no_repeat_ngram_size 1

    # The stage's own settings are what the engine samples with: temperature 0.7 and top-k 5 here.
    tempered = sampling_for(tokenizer, max_new_tokens=6, stop_token_ids=stops, temperature=0.7, top_k=5, logprobs=True)
    for prompt, (response, logprobs) in zip(prompts[:6], engine.generate(prompts[:6], tempered, range(6))):
        torch.testing.assert_close(
            torch.tensor(logprobs),
            _reference_logprobs(model, prompt, response, temperature=0.7, top_k=5),
            atol=SYNCED_TOLERANCE,
            rtol=0,
        )


def test_an_architecture_vllm_lacks_is_one_line_before_anything_trains(llama3_engine, tmp_path):
    from rlhf.errors import ConfigError
    from rlhf.rollout.sampling import start_engine

    path, _ = llama3_engine
    foreign = tmp_path / "foreign"
    shutil.copytree(path, foreign)
    config = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "architectures": ["BioGptForCausalLM"]}))
    engine = start_engine(str(foreign), max_model_len=MAX_LENGTH, max_num_seqs=4)
    with pytest.raises(ConfigError) as raised:
        engine.wait_ready()
    message = str(raised.value)
    assert "\n" not in message and "has no model for BioGptForCausalLM; use rollout_engine: hf" in message
    assert engine.process is None  # ended, not left behind


def test_labels_export_samples_k_responses_per_prompt_on_its_own_engine(models):
    """`labels export --rollout_engine vllm` (and best-of-n, through the same call): an engine started for the
    call on the policy's checkpoint, k seeded samples per prompt, decoded as `generate`'s are."""
    import json as json_module

    from rlhf.labels.sampling import sample_k_responses

    prompts = [json_module.loads(line)["prompt"] for line in open(models["prompts"]).read().splitlines()[:3]]
    settings = dict(k=3, max_new_tokens=6, seed=5, batch_size=4, rollout_engine="vllm")
    items = sample_k_responses(models["policy"], prompts, **settings)
    assert [prompt for prompt, _ in items] == prompts
    assert all(len(responses) == 3 and all(isinstance(text, str) for text in responses) for _, responses in items)
    assert any(len(set(responses)) > 1 for _, responses in items)  # seeded per request, not one seed for all
