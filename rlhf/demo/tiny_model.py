"""A tiny causal LM and a word-level tokenizer for the demo, saved as a normal Hugging Face directory.

Every stage then loads it with `from_pretrained`, the same path a user's own model takes.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhf.io import atomic_directory

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
# Roles and the template let the conversational `messages` format work on the demo model too.
CHAT_ROLES = ("user", "assistant", "system")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}assistant :{% generation %} {{ message['content'] }}{{ eos_token }}"
    "{% endgeneration %}{% else %}{{ message['role'] }} : {{ message['content'] }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)


def build_tokenizer(words: list[str]):
    """A word-level tokenizer trained with `tokenizers` on the task's words, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk"]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.WordLevelTrainer(special_tokens=specials)
    tokenizer.train_from_iterator([" ".join([*words, *CHAT_ROLES])], trainer=trainer)
    bos = SPECIAL_TOKENS["bos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=bos,
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        model_max_length=64,
    )
    wrapped.padding_side = "left"  # prompts are left-padded for batched generation
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_key_value_heads: int | None = None,
    **overrides,
):
    """A LlamaConfig for a tiny model; biases on, so that BitFit has something to train (Llama's default has none)."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads or num_heads,
        attention_bias=True,
        mlp_bias=True,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def build_tiny_model(
    out_dir: str | os.PathLike,
    words: list[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised Llama-style model and its tokenizer to `out_dir`."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(words)
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return Path(out_dir)


def build_tiny_reward_model(
    out_dir: str | os.PathLike, policy_dir: str | os.PathLike, *, seed: int = 1, head_scale: float = 1.0
) -> Path:
    """Save a reward model of the policy's architecture and tokenizer, with a random scalar head, to `out_dir`.

    `head_scale` > 1 spreads its (fixed, random) scores, so that PPO on it has something to climb.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(policy_dir)
    config.num_labels = 1
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(head_scale)
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(policy_dir).save_pretrained(staging)
    return Path(out_dir)
