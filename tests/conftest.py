"""Shared fixtures: tiny models built from a config, never downloaded."""

from __future__ import annotations

import pytest
import torch

TINY_VOCAB = 64


@pytest.fixture(autouse=True)
def _environment_restored():
    """Stages run in-process set RANK, LOCAL_RANK, MASTER_PORT... for a world of one; later tests, and the
    subprocesses they start, must not inherit them."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        # Biases on, so that BitFit has something to train (Llama's default has none).
        attention_bias=True, mlp_bias=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


@pytest.fixture
def tiny_causal_lm():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config())


@pytest.fixture
def tiny_reward_model():
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(tiny_llama_config(num_labels=1))
