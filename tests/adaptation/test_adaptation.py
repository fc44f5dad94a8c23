"""Adaptation: each method trains exactly its own parameters, saves and loads back to the same logits, and the
base model is recovered exactly (Houlsby adapters at init, adapters disabled)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from rlhf.adaptation.apply import (
    apply_adaptation,
    count_parameters,
    disable_adapter_context,
    parameter_summary,
    virtual_token_count,
)
from rlhf.adaptation.checkpoint import load_adapted, save_adapted
from rlhf.adaptation.config import METHODS, AdaptationConfig
from rlhf.errors import ConfigError
from tests.helpers.tiny import tiny_llama_config

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` in get_peft_model; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

INPUT_IDS = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 10, 11, 12, 13, 14]])
LAYERS = (0, 1)
LLAMA_LINEAR = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
CASES = [
    (method, task)
    for task in ("causal_lm", "reward")
    for method in METHODS
    if not (method == "probe" and task == "causal_lm")
]
CASE_IDS = [f"{method}-{task}" for method, task in CASES]


def expected_trainable(method: str, task: str) -> set[str]:
    """The parameter names each method trains on the tiny two-layer Llama, written out by pattern."""
    peft_body = "base_model.model.model.layers"
    names = {
        "lora": {
            f"{peft_body}.{i}.{module}.lora_{factor}.default.weight"
            for i in LAYERS
            for module in LLAMA_LINEAR
            for factor in "AB"
        },
        "prompt_tuning": {"prompt_encoder.default.embedding.weight"},
        "prefix_tuning": {"prompt_encoder.default.embedding.weight"},
        # peft's IA3 defaults for Llama: rescale keys, values and the feed-forward output.
        "ia3": {
            f"{peft_body}.{i}.{module}.ia3_l.default"
            for i in LAYERS
            for module in ("self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")
        },
        "adapter": {
            f"model.layers.{i}.{module}.adapter.{projection}.{kind}"
            for i in LAYERS
            for module in ("self_attn.o_proj", "mlp")
            for projection in ("down", "up")
            for kind in ("weight", "bias")
        },
        "bitfit": {f"model.layers.{i}.{module}.bias" for i in LAYERS for module in LLAMA_LINEAR},
        "probe": set(),
    }[method]
    if task == "reward":
        names |= {
            "lora": {"base_model.model.score.modules_to_save.default.weight"},
            "ia3": {"base_model.model.score.modules_to_save.default.weight"},
            # prompt learning wraps the transformers model directly, one `model.` level less.
            "prompt_tuning": {"base_model.score.modules_to_save.default.weight"},
            "prefix_tuning": {"base_model.score.modules_to_save.default.weight"},
        }.get(method, {"score.weight"})
    return names


def trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def last_hidden_state(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS, output_hidden_states=True).hidden_states[-1]


def train_steps(model, steps: int = 2) -> None:
    """Adam steps on a fixed regression loss; two steps so that factors initialised at zero also move."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = (model(input_ids=INPUT_IDS).logits.float() - 1).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture
def models(tiny_causal_lm, tiny_reward_model):
    return {"causal_lm": tiny_causal_lm, "reward": tiny_reward_model}


@pytest.fixture
def base_dir(tmp_path, tiny_causal_lm) -> Path:
    """A saved base model, as the SFT and reward stages start from (peft adapters refer to it by path)."""
    path = tmp_path / "base"
    tiny_causal_lm.save_pretrained(path)
    return path


# --- which parameters train -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,task", CASES, ids=CASE_IDS)
def test_each_method_trains_exactly_its_parameters(models, method, task):
    model = models[task]
    all_names = {name for name, _ in model.named_parameters()}
    adapted = apply_adaptation(model, AdaptationConfig(adaptation_method=method), task)
    expected = all_names if method == "full" else expected_trainable(method, task)
    assert trainable_names(adapted) == expected


@pytest.mark.parametrize("method,task", CASES, ids=CASE_IDS)
def test_optimizer_steps_change_exactly_the_trainable_parameters(models, method, task):
    adapted = apply_adaptation(models[task], AdaptationConfig(adaptation_method=method), task)
    before = {name: parameter.detach().clone() for name, parameter in adapted.named_parameters()}
    train_steps(adapted)
    changed = {name for name, parameter in adapted.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed == trainable_names(adapted)


def test_bitfit_on_a_model_without_biases_is_a_config_error():
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attention_bias=False, mlp_bias=False))
    with pytest.raises(ConfigError, match="bitfit"):
        apply_adaptation(model, AdaptationConfig(adaptation_method="bitfit"), "causal_lm")


def test_probe_on_a_causal_lm_is_a_config_error(tiny_causal_lm):
    with pytest.raises(ConfigError, match="probe"):
        apply_adaptation(tiny_causal_lm, AdaptationConfig(adaptation_method="probe"), "causal_lm")


def test_reward_task_on_a_causal_lm_is_a_config_error(tiny_causal_lm):
    with pytest.raises(ConfigError, match="sequence-classification"):
        apply_adaptation(tiny_causal_lm, AdaptationConfig(adaptation_method="lora"), "reward")


def test_adapting_twice_is_a_config_error(tiny_causal_lm):
    config = AdaptationConfig(adaptation_method="adapter")
    apply_adaptation(tiny_causal_lm, config, "causal_lm")
    with pytest.raises(ConfigError, match="already"):
        apply_adaptation(tiny_causal_lm, config, "causal_lm")


def test_houlsby_adapters_on_an_unknown_layer_layout_are_a_config_error():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=1,
        )
    )
    with pytest.raises(ConfigError, match="layer layout"):
        apply_adaptation(model, AdaptationConfig(adaptation_method="adapter"), "reward")


@pytest.mark.parametrize(
    "overrides",
    [
        {"adaptation_method": "qlora"},
        {"lora_r": 0},
        {"lora_dropout": 1.0},
        {"lora_alpha": 0},
        {"lora_target_modules": []},
        {"lora_target_modules": "q_proj"},
        {"num_virtual_tokens": 0},
        {"adapter_bottleneck": 0},
    ],
)
def test_bad_config_values_are_config_errors(overrides):
    with pytest.raises(ConfigError):
        AdaptationConfig(**overrides)


def test_unknown_task_is_a_config_error(tiny_causal_lm):
    with pytest.raises(ConfigError, match="task"):
        apply_adaptation(tiny_causal_lm, AdaptationConfig(), "value")


# --- Houlsby adapters -------------------------------------------------------------------------------------


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    )


LLAMA_WRAPPED = [
    "model.layers.0.self_attn.o_proj",
    "model.layers.0.mlp",
    "model.layers.1.self_attn.o_proj",
    "model.layers.1.mlp",
]


@pytest.mark.parametrize(
    "build,task,wrapped",
    [
        (lambda: LlamaForCausalLM(tiny_llama_config()), "causal_lm", LLAMA_WRAPPED),
        (lambda: LlamaForSequenceClassification(tiny_llama_config(num_labels=1)), "reward", LLAMA_WRAPPED),
        (
            _gpt2,
            "causal_lm",
            [
                "transformer.h.0.attn.c_proj",
                "transformer.h.0.mlp",
                "transformer.h.1.attn.c_proj",
                "transformer.h.1.mlp",
            ],
        ),
        (
            _gpt_neox,
            "causal_lm",
            [
                "gpt_neox.layers.0.attention.dense",
                "gpt_neox.layers.0.mlp",
                "gpt_neox.layers.1.attention.dense",
                "gpt_neox.layers.1.mlp",
            ],
        ),
    ],
    ids=["llama", "llama-reward", "gpt2", "gpt-neox"],
)
def test_houlsby_adapters_are_the_identity_at_init_and_move_after_a_step(build, task, wrapped):
    from rlhf.adaptation.houlsby import adapted_modules

    torch.manual_seed(0)
    model = build().eval()
    base_logits = logits_of(model)
    apply_adaptation(model, AdaptationConfig(adaptation_method="adapter", adapter_bottleneck=4), task)
    assert list(adapted_modules(model)) == wrapped
    assert torch.equal(logits_of(model), base_logits)
    train_steps(model, steps=1)
    assert not torch.allclose(logits_of(model), base_logits)


# --- the base model back: disable_adapter_context ---------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "adapter"])
@pytest.mark.parametrize("task", ["causal_lm", "reward"])
def test_disable_adapter_context_gives_the_base_model_exactly(models, method, task):
    model = models[task].eval()
    base_logits, base_hidden = logits_of(model), last_hidden_state(model)
    adapted = apply_adaptation(model, AdaptationConfig(adaptation_method=method), task)
    train_steps(adapted)
    adapted_logits = logits_of(adapted)
    assert not torch.allclose(adapted_logits, base_logits)
    with disable_adapter_context(adapted):
        assert torch.equal(last_hidden_state(adapted), base_hidden)
        if not (method == "adapter" and task == "reward"):
            assert torch.equal(logits_of(adapted), base_logits)
        # else: the Houlsby reward head was trained in place, so only the body is the base model's
        # (peft keeps the untrained original of a modules_to_save head and switches back to it).
    assert torch.equal(logits_of(adapted), adapted_logits)


@pytest.mark.parametrize("method", ["full", "bitfit"])
def test_disable_adapter_context_without_an_adapter_is_a_config_error(tiny_causal_lm, method):
    adapted = apply_adaptation(tiny_causal_lm, AdaptationConfig(adaptation_method=method), "causal_lm")
    with pytest.raises(ConfigError, match="no adapter"):
        with disable_adapter_context(adapted):
            pass


def test_disable_adapter_context_on_a_prompt_tuned_reward_model_is_a_config_error(tiny_reward_model):
    adapted = apply_adaptation(tiny_reward_model, AdaptationConfig(adaptation_method="prompt_tuning"), "reward")
    with pytest.raises(ConfigError, match="prompt_tuning"):
        with disable_adapter_context(adapted):
            pass


def test_prompt_tuning_prepends_virtual_token_positions_to_the_logits(tiny_causal_lm):
    config = AdaptationConfig(adaptation_method="prompt_tuning", num_virtual_tokens=3)
    adapted = apply_adaptation(tiny_causal_lm, config, "causal_lm")
    assert virtual_token_count(adapted) == 3
    assert logits_of(adapted).shape[1] == INPUT_IDS.shape[1] + 3
    with disable_adapter_context(adapted):
        assert logits_of(adapted).shape[1] == INPUT_IDS.shape[1]


def test_prefix_tuning_keeps_the_input_length(tiny_causal_lm):
    adapted = apply_adaptation(tiny_causal_lm, AdaptationConfig(adaptation_method="prefix_tuning"), "causal_lm")
    assert virtual_token_count(adapted) == 0
    assert logits_of(adapted).shape[1] == INPUT_IDS.shape[1]


# --- saving and loading -----------------------------------------------------------------------------------

ROUND_TRIPS = [
    (method, task, merge) for method, task in CASES for merge in ((True, False) if method == "lora" else (False,))
]


@pytest.mark.parametrize(
    "method,task,merge", ROUND_TRIPS, ids=[f"{m}-{t}" + ("-merged" if g else "") for m, t, g in ROUND_TRIPS]
)
def test_save_then_load_gives_the_same_logits(base_dir, tmp_path, method, task, merge):
    config = AdaptationConfig(adaptation_method=method, merge_lora_on_save=merge)
    torch.manual_seed(1)
    adapted = apply_adaptation(load_adapted(base_dir, task), config, task)
    train_steps(adapted)
    trained_logits = logits_of(adapted)

    out_dir = save_adapted(adapted, None, tmp_path / "out", config)
    assert torch.equal(logits_of(adapted), trained_logits)  # saving left the live model as it was
    loaded = load_adapted(out_dir, task)

    if merge:
        # W x + B A x and (W + B A) x round differently, so merged logits match to float precision only; they
        # match peft's own merge_and_unload exactly.
        assert torch.allclose(logits_of(loaded), trained_logits, rtol=0, atol=1e-5)
        assert torch.equal(logits_of(loaded), logits_of(copy.deepcopy(adapted).merge_and_unload()))
    else:
        assert torch.equal(logits_of(loaded), trained_logits)
    assert trainable_names(loaded) == set() and not loaded.training
    assert json.loads((out_dir / "rlhf_adaptation.json").read_text())["adaptation_method"] == method
    files = {path.name for path in out_dir.iterdir()}
    assert not any(name.endswith(".bin") for name in files)
    if method in ("prompt_tuning", "prefix_tuning", "ia3") or (method == "lora" and not merge):
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    else:
        assert {"config.json", "model.safetensors"} <= files and "adapter_config.json" not in files
    assert ("rlhf_adapters.safetensors" in files) == (method == "adapter")


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_gpt2_round_trip_with_conv1d_layers_and_tied_embeddings(tmp_path, method):
    # GPT-2 stores its linear layers transposed (Conv1D) and ties lm_head to the input embedding.
    torch.manual_seed(0)
    _gpt2().save_pretrained(tmp_path / "base")
    config = AdaptationConfig(adaptation_method=method, merge_lora_on_save=True)
    adapted = apply_adaptation(load_adapted(tmp_path / "base", "causal_lm"), config, "causal_lm")
    train_steps(adapted)
    loaded = load_adapted(save_adapted(adapted, None, tmp_path / "out", config), "causal_lm")
    assert torch.allclose(logits_of(loaded), logits_of(adapted), rtol=0, atol=1e-5)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_unmerged_adapter_names_its_base_by_absolute_path(base_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(base_dir.parent)
    config = AdaptationConfig(adaptation_method="lora", merge_lora_on_save=False)
    adapted = apply_adaptation(load_adapted("base", "causal_lm"), config, "causal_lm")
    out_dir = save_adapted(adapted, None, "out", config)
    saved = json.loads((out_dir / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base_dir.resolve())
    monkeypatch.chdir(tmp_path.parent)
    assert torch.equal(logits_of(load_adapted(base_dir.parent / "out", "causal_lm")), logits_of(adapted))


def test_unmerged_adapter_of_a_model_without_a_path_is_a_config_error(tiny_causal_lm, tmp_path):
    config = AdaptationConfig(adaptation_method="lora", merge_lora_on_save=False)
    adapted = apply_adaptation(tiny_causal_lm, config, "causal_lm")
    with pytest.raises(ConfigError, match="base model"):
        save_adapted(adapted, None, tmp_path / "out", config)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method,task", [("lora", "causal_lm"), ("adapter", "reward")])
def test_load_trainable_restores_the_methods_trainable_parameters(base_dir, tmp_path, method, task):
    config = AdaptationConfig(adaptation_method=method, merge_lora_on_save=False)
    adapted = apply_adaptation(load_adapted(base_dir, task), config, task)
    save_adapted(adapted, None, tmp_path / "out", config)
    loaded = load_adapted(tmp_path / "out", task, is_trainable=True)
    assert trainable_names(loaded) == expected_trainable(method, task)


def test_load_with_dtype(base_dir):
    model = load_adapted(base_dir, "causal_lm", torch_dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_load_of_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load"):
        load_adapted(tmp_path / "nowhere", "causal_lm")


def test_save_replaces_an_existing_directory_atomically(tiny_causal_lm, tmp_path):
    config = AdaptationConfig(adaptation_method="full")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("from an earlier run")
    save_adapted(tiny_causal_lm, None, out_dir, config)
    assert not (out_dir / "stale.txt").exists() and (out_dir / "model.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging or retired directory left beside


def test_a_failed_save_leaves_the_previous_directory_intact(tiny_causal_lm, tmp_path, monkeypatch):
    config = AdaptationConfig(adaptation_method="full")
    out_dir = save_adapted(tiny_causal_lm, None, tmp_path / "out", config)
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}

    def save_then_fail(directory, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(tiny_causal_lm, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapted(tiny_causal_lm, None, out_dir, config)
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_save_writes_the_tokenizer(tiny_causal_lm, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    out_dir = save_adapted(tiny_causal_lm, tokenizer, tmp_path / "out", AdaptationConfig())
    assert AutoTokenizer.from_pretrained(out_dir)("hello world")["input_ids"] == [3, 4]


def test_save_with_the_wrong_config_is_a_bug_not_a_config_error(tiny_causal_lm, tmp_path):
    with pytest.raises(ValueError, match="lora"):
        save_adapted(tiny_causal_lm, None, tmp_path / "out", AdaptationConfig(adaptation_method="lora"))


# --- counting ---------------------------------------------------------------------------------------------


def test_count_parameters_and_summary():
    layer = torch.nn.Linear(1000, 2)  # 2,000 weights and 2 biases
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == (2000, 2002)
    assert parameter_summary(layer) == "trainable 2,000 / 2,002 (99.90%)"


def test_count_parameters_of_a_probe(tiny_reward_model):
    total = sum(parameter.numel() for parameter in tiny_reward_model.parameters())
    apply_adaptation(tiny_reward_model, AdaptationConfig(adaptation_method="probe"), "reward")
    assert count_parameters(tiny_reward_model) == (32, total)  # score: hidden size 32 -> 1 output, no bias
