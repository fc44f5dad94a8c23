"""rlhf/rollout/settings.py, sampling.py, weights.py and ppo/rollouts.py parts that need no vLLM: the one-line
errors before anything loads, the KV cache a CPU engine gets, seeds, padding, tied names."""

from __future__ import annotations

import sys

import pytest
import torch

from rlhf.errors import ConfigError


def test_rollout_engine_vllm_without_vllm_is_one_line_naming_the_install(monkeypatch, tmp_path):
    from rlhf.rollout import settings

    monkeypatch.setenv(settings.PYTHON_ENV, sys.executable)  # the suite's Python has no vLLM
    with pytest.raises(ConfigError) as raised:
        settings.vllm_python()
    message = str(raised.value)
    assert "\n" not in message and "has no vLLM" in message
    assert "pip install 'rlhf[vllm]'" in message and "make vllm" in message
    monkeypatch.delenv(settings.PYTHON_ENV)
    monkeypatch.setattr(settings, "CHECKOUT_VENV", tmp_path / "none")
    with pytest.raises(ConfigError, match="vLLM is not installed; pip install 'rlhf\\[vllm\\]'"):
        settings.vllm_python()


def test_a_prompt_and_response_over_the_models_length_is_one_line():
    from rlhf.rollout.settings import check_model_length

    assert check_model_length(40, 8, 64) == 48
    with pytest.raises(
        ConfigError, match="max_prompt_length 256 \\+ max_new_tokens 32 = 288 is over the engine's max_model_len 128"
    ):
        check_model_length(256, 32, 128)


def test_the_stage_refuses_before_any_model_loads(tmp_path, monkeypatch, capsys, models_64):
    """The PPO stage's own path: vLLM missing, then a length the model cannot hold, each in one line (exit code 2)
    before any engine is built."""
    from rlhf.rollout import settings
    from rlhf.stages.ppo import main
    from tests.helpers.ppo_setup import stage_arguments

    models = models_64
    monkeypatch.setattr(settings, "CHECKOUT_VENV", tmp_path / "none")
    monkeypatch.delenv(settings.PYTHON_ENV, raising=False)
    monkeypatch.setattr("rlhf.ppo.engines.build_engines", None)  # reaching it would be a TypeError, not one line
    argv = stage_arguments(models, tmp_path / "run", tmp_path / "registry", rollout_engine="vllm")

    def refusal() -> str:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        return lines[-1]

    assert refusal().startswith("error: rollout_engine vllm: vLLM is not installed; pip install 'rlhf[vllm]'")
    monkeypatch.setenv(settings.PYTHON_ENV, sys.executable)
    monkeypatch.setattr(settings, "_has_vllm", lambda python: True)  # as if installed: the length is checked next
    # The tiny policy holds 64 positions; the stage's default max_prompt_length is 256.
    assert refusal() == (
        "error: rollout_engine vllm: max_prompt_length 256 + max_new_tokens 4 = 260 is over the "
        "engine's max_model_len 64 (the model's max_position_embeddings); lower one of them"
    )


def test_rollout_is_cap_needs_the_vllm_engine():
    from rlhf.ppo.config import PPOStageConfig

    with pytest.raises(ConfigError, match="rollout_is_cap corrects for another engine's samples"):
        PPOStageConfig(prompts_file="p.jsonl", rollout_is_cap=2.0)
    with pytest.raises(ConfigError, match="rollout_engine must be one of hf, vllm"):
        PPOStageConfig(prompts_file="p.jsonl", rollout_engine="sglang")


def test_a_cpu_engines_kv_cache_holds_the_batch_at_full_length(tmp_path):
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tiny_model
    from rlhf.rollout.settings import CPU_KV_FLOOR_BYTES, cpu_kv_cache_bytes

    path = build_tiny_model(tmp_path / "m", corpus_words(), hidden_size=128, num_layers=3, num_heads=4)
    # 2 (K and V) x 3 layers x 4 heads x 32 dims x 4 bytes = 3072 bytes a token; 100 tokens: 4 blocks of 32, + 1.
    assert cpu_kv_cache_bytes(str(path), 100, 64, "float32") == 3072 * 5 * 32 * 64
    assert cpu_kv_cache_bytes(str(path), 100, 128, "bfloat16") == 1536 * 5 * 32 * 128
    assert cpu_kv_cache_bytes(str(path), 10, 1, "float32") == CPU_KV_FLOOR_BYTES


def test_request_seeds_depend_on_their_parts_only():
    from rlhf.rollout.sampling import seed_of

    assert seed_of(0, "train", 3, 1, 7) == seed_of(0, "train", 3, 1, 7)
    assert (
        len({seed_of(0, "train", step, rank, row) for step in range(3) for rank in range(2) for row in range(4)}) == 24
    )
    assert 0 <= seed_of("x") < 2**63


def test_engine_answers_become_padded_rows():
    from rlhf.ppo.rollouts import padded

    ids, logprobs = padded([([5, 6, 2], [-0.1, -0.2, -0.3]), ([7], [-1.0])], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 2], [7, 0, 0]]
    torch.testing.assert_close(logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-1.0, 0.0, 0.0]]))


def test_tied_weights_go_under_every_name():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.rollout.weights import tied_names, with_tied_names

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=True,
        )
    )
    assert tied_names(model) == {"model.embed_tokens.weight": ["lm_head.weight"]}
    sent = list(with_tied_names([("model.embed_tokens.weight", 1), ("model.norm.weight", 2)], tied_names(model)))
    assert sent == [("model.embed_tokens.weight", 1), ("lm_head.weight", 1), ("model.norm.weight", 2)]


def test_sleep_mode_needs_a_gpu_and_memory_utilization_is_a_share():
    from rlhf.ppo.config import PPOStageConfig
    from rlhf.rollout.settings import check_sleep_mode

    assert not torch.cuda.is_available()  # the suite runs on a CPU
    with pytest.raises(ConfigError, match="vllm_sleep_mode frees GPU memory and needs a CUDA GPU"):
        check_sleep_mode(True)
    check_sleep_mode(False)
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization must be in \\(0, 1\\], got 1.5"):
        PPOStageConfig(prompts_file="p.jsonl", rollout_engine="vllm", vllm_gpu_memory_utilization=1.5)
