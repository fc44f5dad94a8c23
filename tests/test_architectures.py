"""Real checkpoints' conventions: shipped generation settings, several EOS ids, tokenizers that differ in more
than their vocabulary. Tiny random models of real families (tests/helpers/architectures.py), never downloaded."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rlhf.demo.task import corpus_words
from rlhf.errors import ConfigError
from tests.helpers.architectures import build_family_model, family_tokenizer, llama3_stop_ids
from tests.helpers.hub_cache import cache_hub_dataset


class _Engine:
    """What experience.generate reads of a DeepSpeed engine, for a plain model (ZeRO-0)."""

    def __init__(self, module):
        self.module, self.device = module, torch.device("cpu")

    def zero_optimization_stage(self) -> int:
        return 0


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return build_family_model(tmp_path_factory.mktemp("llama3"), "llama3", corpus_words())


def _load(path):
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(str(path))


def _sample(model, tokenizer, settings, seed: int):
    from rlhf.ppo import experience

    batch = experience.tokenize_prompts(tokenizer, ["owl dog :", "cat :", "apple banana cherry :"] * 4)
    torch.manual_seed(seed)
    return experience.generate(_Engine(model), batch, settings.generation_config(tokenizer), "auto")


def test_a_checkpoints_generation_config_does_not_change_how_ppo_samples(llama3):
    from transformers import GenerationConfig

    from rlhf.generation import stop_token_ids
    from rlhf.ppo.logprobs import sampling_settings_for

    model, tokenizer = _load(llama3)
    shipped = model.generation_config
    # Every sampling-altering field is set by the checkpoint.
    assert shipped.no_repeat_ngram_size == 1 and shipped.repetition_penalty == 1.8 and shipped.top_k == 3
    settings = sampling_settings_for(tokenizer, 1.0, 0, 1.0, 12, stop_token_ids(tokenizer, model))
    ours = _sample(model, tokenizer, settings, seed=5)
    neutral = copy.deepcopy(model)
    neutral.generation_config = GenerationConfig()
    assert torch.equal(ours, _sample(neutral, tokenizer, settings, seed=5))
    # The checkpoint's settings would have changed the samples: without the guard generate() fills our unset
    # fields (repetition_penalty, no_repeat_ngram_size) from them.
    batch_ids = _unguarded_sample(model, tokenizer, settings, seed=5)
    assert not torch.equal(ours, batch_ids)
    # What generate sampled from is what PPO scores: the tempered softmax of the model's logits.
    assert model.generation_config is shipped  # restored after the block


def _unguarded_sample(model, tokenizer, settings, seed: int):
    from rlhf.ppo import experience

    batch = experience.tokenize_prompts(tokenizer, ["owl dog :", "cat :", "apple banana cherry :"] * 4)
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=batch.query_ids,
        attention_mask=batch.query_mask,
        generation_config=settings.generation_config(tokenizer),
    )
    return output[:, batch.query_ids.shape[1] :]


def test_the_samplers_logprobs_equal_ppos_whatever_the_checkpoint_ships(llama3):
    from rlhf.generation import neutral_generation_defaults, stop_token_ids
    from rlhf.ppo import experience, forward, rewards
    from rlhf.ppo.logprobs import sampling_logprobs, sampling_settings_for

    model, tokenizer = _load(llama3)
    settings = sampling_settings_for(tokenizer, 0.8, 0, 1.0, 8, stop_token_ids(tokenizer, model))
    batch = experience.tokenize_prompts(tokenizer, ["owl dog :", "cat :", "apple banana cherry :"])
    config = settings.generation_config(tokenizer)
    config.update(output_scores=True, return_dict_in_generate=True)
    torch.manual_seed(0)
    with neutral_generation_defaults(model), torch.no_grad():
        output = model.generate(input_ids=batch.query_ids, attention_mask=batch.query_mask, generation_config=config)
    response_ids = output.sequences[:, batch.query_ids.shape[1] :]
    sampler = torch.stack([torch.log_softmax(s.float(), -1) for s in output.scores], 1)
    sampler = sampler.gather(-1, response_ids[..., None])[..., 0]
    mask = rewards.response_mask_after_eos(response_ids, settings.stop_token_ids, tokenizer.pad_token_id)
    inputs = forward.sequence_inputs(batch.query_ids, batch.query_mask, response_ids, mask)
    with torch.no_grad():
        logits = forward.response_logits(model, inputs, batch.query_ids.shape[1])
    ours = sampling_logprobs(logits, response_ids, settings)
    real = mask.bool()
    assert real.sum() >= 6
    torch.testing.assert_close(ours[real], sampler[real], atol=1e-4, rtol=1e-4)


def test_every_stop_token_of_the_checkpoint_ends_a_response(llama3):
    from rlhf.generation import stop_token_ids
    from rlhf.ppo import rewards
    from rlhf.ppo.logprobs import sampling_settings_for
    from rlhf.ppo.rollout import Rollout
    from rlhf.ppo.tracking import non_eos_fraction

    model, tokenizer = _load(llama3)
    end_of_text, eot, eom = llama3_stop_ids(tokenizer)
    stops = stop_token_ids(tokenizer, model)
    assert stops == (end_of_text, eot, eom)
    settings = sampling_settings_for(tokenizer, 1.0, 0, 1.0, 8, stops)
    assert settings.generation_config(tokenizer).eos_token_id == [end_of_text, eot, eom]
    word = tokenizer.convert_tokens_to_ids("owl")
    pad = tokenizer.pad_token_id
    response_ids = torch.tensor([[word, eot, word, pad], [word, eom, pad, pad], [word, word, word, word]])
    mask = rewards.response_mask_after_eos(response_ids, stops, pad)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    penalised = rewards.score_with_eos_penalty(torch.zeros(3), response_ids, stops, missing_eos_penalty=1.0)
    assert penalised.tolist() == [0.0, 0.0, -1.0]
    rollout = Rollout(
        query_ids=response_ids,
        query_mask=mask,
        response_ids=response_ids,
        response_mask=mask,
        logprobs=None,
        ref_logprobs=None,
        values=None,
        scores=None,
    )
    assert non_eos_fraction(rollout, stops) == pytest.approx(1 / 3)


def test_a_critic_that_tokenizes_otherwise_is_refused(llama3, tmp_path):
    from rlhf.ppo.inputs import check_critic_tokenizer

    qwen2 = build_family_model(tmp_path / "qwen2", "qwen2", corpus_words())
    paths = {"actor": str(llama3), "critic": str(qwen2)}
    from rlhf.models import load_tokenizer

    with pytest.raises(ConfigError) as refused:
        check_critic_tokenizer(load_tokenizer(str(llama3)), paths, trust_remote_code=False)
    message = str(refused.value)
    assert "\n" not in message and "critic_model" in message and "tokenizes differently" in message
    # The same tokenizer saved with the critic is accepted.
    load_tokenizer(str(llama3)).save_pretrained(tmp_path / "same")
    check_critic_tokenizer(
        load_tokenizer(str(llama3)), {"actor": str(llama3), "critic": str(tmp_path / "same")}, trust_remote_code=False
    )


def test_same_vocabulary_is_not_same_tokenization(tmp_path):
    from rlhf.models import load_tokenizer, same_tokenization

    words = corpus_words()
    family_tokenizer("llama3", words).save_pretrained(tmp_path / "saved")
    first, reloaded = (load_tokenizer(str(tmp_path / "saved")) for _ in range(2))
    assert first is not reloaded and same_tokenization(first, reloaded)
    other_template = load_tokenizer(str(tmp_path / "saved"))
    other_template.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert other_template.get_vocab() == first.get_vocab() and not same_tokenization(first, other_template)
    other_eos = load_tokenizer(str(tmp_path / "saved"))
    other_eos.eos_token = "<|eot_id|>"
    assert not same_tokenization(first, other_eos)
    # OPT prepends its BOS, Mistral-style tokenizers theirs: the probe's ids show it even where vocabularies
    # are alike.
    assert not same_tokenization(family_tokenizer("opt", words), family_tokenizer("mistral", words))


# ---------------------------------------------------------------------------------------------------------
# The matrix: every family through SFT -> RM -> PPO, full fine-tuning and (three of them) LoRA
# ---------------------------------------------------------------------------------------------------------

MATRIX = [(family, "full") for family in ("llama3", "qwen2", "gpt2", "opt", "gpt_neox", "mistral")] + [
    (family, "lora") for family in ("llama3", "qwen2", "gpt2")
]


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory):
    from rlhf.data.rankings import Ranking, write_rankings
    from rlhf.demo.task import make_split

    root = tmp_path_factory.mktemp("matrix_data")
    records = make_split(48, seed=4)
    (root / "demos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:32]))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records[32:]))
    rankings = [
        Ranking(f"r{i}", r["prompt"], (r["completion"], "dog cat", "owl owl owl", "apple"), (1, 2, 3, 4), "labeler")
        for i, r in enumerate(records[:16])
    ]
    write_rankings(root / "rankings.jsonl", rankings)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("family,method", MATRIX, ids=[f"{f}-{m}" for f, m in MATRIX])
def test_each_family_trains_through_sft_rm_and_ppo(family, method, matrix_data, tmp_path):
    from rlhf.registry import Registry, resolve_model
    from rlhf.stages import ppo, rm, sft
    from tests.helpers.ppo_setup import saved_weights, stage_arguments

    base = build_family_model(tmp_path / "base", family, corpus_words())
    registry = tmp_path / "registry"
    adaptation = ["--adaptation_method", method] + (["--lora_r", "4"] if method == "lora" else [])
    common = [
        "--registry_dir",
        str(registry),
        "--report_to",
        "none",
        "--seed",
        "0",
        "--max_length",
        "48",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
    ]
    sft.main(
        [
            "--model_name_or_path",
            str(base),
            "--train_file",
            str(matrix_data / "demos.jsonl"),
            "--output_dir",
            str(tmp_path / "sft"),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "1e-3",
            *adaptation,
            *common,
        ]
    )
    rm.main(
        [
            "--model_name_or_path",
            "sft",
            "--train_file",
            str(matrix_data / "rankings.jsonl"),
            "--eval_fraction",
            "0.25",
            "--output_dir",
            str(tmp_path / "rm"),
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-3",
            *adaptation,
            *common,
        ]
    )
    paths = {
        "policy": "sft",
        "reward": "rm",
        "prompts": str(matrix_data / "prompts.jsonl"),
        "eval_prompts": str(matrix_data / "prompts.jsonl"),
    }
    ppo_method = ["--adaptation_method", method, "--critic_adaptation_method", method] + (
        ["--lora_r", "4"] if method == "lora" else []
    )
    ppo.main(
        [
            *stage_arguments(
                paths,
                tmp_path / "ppo",
                registry,
                max_steps=2,
                save_steps=1,
                eval_prompts=4,
                max_new_tokens=6,
                rollout_batch_size=4,
                minibatch_size=2,
            ),
            *ppo_method,
        ]
    )

    entries = {entry.name for entry in Registry(registry).entries()}
    assert {"sft", "rm", "ppo"} <= entries
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "ppo_metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor([row["kl"], row["policy_loss"], row["value_loss"]])).all() for row in rows)
    # The policy really moved away from the SFT model it started from.
    final, _ = resolve_model("ppo", Registry(registry))
    sft_path, _ = resolve_model("sft", Registry(registry))
    moved, start = saved_weights(final), saved_weights(sft_path)
    assert any(not torch.equal(moved[name], start[name]) for name in moved if name in start)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_two_families_run_ppo_on_two_processes_under_zero3(family, matrix_data, tmp_path):
    """Tied embeddings (Qwen2) and Conv1D layers without a pad token (GPT-2), sharded over two ranks."""
    from transformers import AutoModelForCausalLM

    from rlhf.ppo.tracking import read_metrics
    from rlhf.registry import Registry, resolve_model
    from rlhf.stages import rm
    from tests.helpers.ppo_setup import REPO, deepspeed_launch, stage_arguments

    base = build_family_model(tmp_path / "base", family, corpus_words())
    registry = tmp_path / "registry"
    rm.main(
        [
            "--model_name_or_path",
            str(base),
            "--train_file",
            str(matrix_data / "rankings.jsonl"),
            "--eval_fraction",
            "0.25",
            "--output_dir",
            str(tmp_path / "rm"),
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-3",
            "--registry_dir",
            str(registry),
            "--report_to",
            "none",
            "--max_length",
            "48",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
        ]
    )
    zero3, inference = (str(REPO / "deepspeed_configs" / name) for name in ("zero3.json", "zero3_inference.json"))
    paths = {
        "policy": str(base),
        "reward": "rm",
        "prompts": str(matrix_data / "prompts.jsonl"),
        "eval_prompts": str(matrix_data / "prompts.jsonl"),
    }
    argv = stage_arguments(
        paths,
        tmp_path / "ppo",
        registry,
        max_steps=2,
        save_steps=2,
        eval_prompts=4,
        max_new_tokens=6,
        rollout_batch_size=4,
        minibatch_size=2,
        actor_deepspeed=zero3,
        critic_deepspeed=zero3,
        reference_deepspeed=inference,
        reward_deepspeed=inference,
    )
    result = deepspeed_launch(argv, tmp_path, 29650 + (family == "gpt2"))
    assert result.returncode == 0, result.stdout[-4000:]
    rows = read_metrics(tmp_path / "ppo")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor([row["kl"], row["policy_loss"], row["value_loss"]])).all() for row in rows)
    # The saved policy is whole (not one rank's shard) and loads as the family's own class.
    final, _ = resolve_model("ppo", Registry(registry))
    loaded = AutoModelForCausalLM.from_pretrained(final)
    fresh = AutoModelForCausalLM.from_pretrained(base)
    assert type(loaded) is type(fresh)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.mark.parametrize("family", ["llama3", "qwen2", "opt"])
def test_sft_and_ptx_tokenize_demonstrations_as_trl_does_through_the_end_of_the_response(family, tmp_path):
    """TRL's SFTTrainer tokenizing the records itself is the reference: the same ids and labels, one BOS, the loss
    on the completion only, through the EOS or end of turn. Where a chat template writes more after the end of the
    turn (Qwen2's newline after <|im_end|>), TRL also trains on it; the SFT stage stops at the stop token, which
    is where generation stops and what the reward model reads."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from rlhf.data.formatting import demonstration_ids
    from rlhf.generation import stop_token_ids_of
    from rlhf.models import load_tokenizer
    from rlhf.ppo.data import ptx_batches

    path = build_family_model(tmp_path / family, family, corpus_words())
    tokenizer = load_tokenizer(str(path))
    stops = stop_token_ids_of(str(path), tokenizer)
    records = [{"prompt": "owl dog : answer :", "completion": " dog owl"}]
    if tokenizer.chat_template:
        records.append(
            {
                "prompt": [{"role": "user", "content": "owl dog"}],
                "completion": [{"role": "assistant", "content": "dog owl"}],
            }
        )
    for record in records:
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(path),
            processing_class=tokenizer,
            args=SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=64, bf16=False, use_cpu=True),
            train_dataset=Dataset.from_list([record]),
        )
        expected = trainer.train_dataset[0]
        ids, mask = demonstration_ids(tokenizer, record["prompt"], record["completion"], stops)
        batch = next(ptx_batches([(ids, mask)], tokenizer.pad_token_id, batch_size=1, seed=0, start_batch=0))
        length = len(ids)
        assert batch["input_ids"][0].tolist() == ids == expected["input_ids"][:length]
        assert batch["labels"][0].tolist() == expected["labels"][:length]
        assert ids[-1] in stops and not set(expected["input_ids"][length:]) & set(stops)
        in_loss = set(tokenizer.convert_ids_to_tokens([int(t) for t in batch["labels"][0] if t != -100]))
        assert batch["labels"][0, 0] == -100 and in_loss & {"<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "</s>"}


@pytest.mark.slow
def test_a_hub_dataset_name_trains_sft_offline_from_the_local_cache(tmp_path):
    import os
    import subprocess
    import sys

    from rlhf.demo.task import make_split

    cache = tmp_path / "hf"
    cache_hub_dataset(cache, "acme/demos", "train", make_split(32, seed=5))
    base = build_family_model(tmp_path / "base", "mistral", corpus_words())
    env = dict(
        os.environ,
        HF_DATASETS_CACHE=str(cache / "datasets"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
    )
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [
        sys.executable,
        "-m",
        "rlhf.stages.sft",
        "--model_name_or_path",
        str(base),
        "--train_file",
        "acme/demos:train",
        "--output_dir",
        str(tmp_path / "sft"),
        "--registry_dir",
        str(tmp_path / "registry"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--max_length",
        "48",
        "--report_to",
        "none",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads(next((tmp_path / "registry" / "entries" / "sft").glob("*.json")).read_text())
    assert entry["config"]["train_file"] == "acme/demos:train" and entry["data_fingerprint"].startswith("sha256:")
    # A split the cache does not hold is a one-line error naming the reference, exit 2.
    missing = subprocess.run(
        [*command[:6], "acme/demos:validation", *command[7:]], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: acme/demos:validation")


def test_hub_references_and_file_paths_are_told_apart():
    from rlhf.data.records import hub_reference

    assert hub_reference("Anthropic/hh-rlhf") == ("Anthropic/hh-rlhf", None, "train")
    assert hub_reference("Anthropic/hh-rlhf:test") == ("Anthropic/hh-rlhf", None, "test")
    assert hub_reference("openbmb/UltraFeedback:default:train") == ("openbmb/UltraFeedback", "default", "train")
    for path in ("data/train.jsonl", "runs/demo/data/sft.json.gz", "a/b/c", "owner/name:", "plain"):
        assert hub_reference(path) is None, path


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_the_readmes_hub_configs_are_valid_stage_configs(stage):
    from rlhf.config import parse_config
    from rlhf.data.records import hub_reference
    from rlhf.ppo.config import PPOStageConfig
    from rlhf.rm.config import RMStageConfig
    from rlhf.sft.config import SFTStageConfig

    config_class = {"sft": SFTStageConfig, "rm": RMStageConfig, "ppo": PPOStageConfig}[stage]
    config = parse_config(config_class, ["--config", f"configs/hub/{stage}.yaml"])
    data = config.prompts_file if stage == "ppo" else config.train_file
    assert hub_reference(data) is not None
