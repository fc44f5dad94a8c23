"""Tiny models built from a config, with the tiny tokenizer's vocabulary."""

from __future__ import annotations

TINY_VOCAB = 64


def tiny_llama_config(**overrides):
    from rlhf.demo.tiny_model import tiny_llama_config as config

    settings = dict(
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return config(TINY_VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_key_value_heads=2, **settings)
