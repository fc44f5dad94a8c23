"""Tiny random checkpoints of real model families, each with a tokenizer of its family's shape, built on disk
from their transformers config classes (never downloaded) and loaded like a user's model.

Word-level tokenizers (trained by `tokenizers` on the demo's words) stand in for the families' BPE ones; what
matters here is what differs between families: which special tokens exist, which is prepended, which ends a
turn, which pads, the chat template and the checkpoint's generation_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS_EXTRA = ("user", "assistant", "system", ":")

# Llama 3 Instruct ships sampling settings and three EOS ids; our sampling must ignore the former and honour
# the latter.
LLAMA3_GENERATION_CONFIG = {
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.9,
    "top_k": 3,
    "repetition_penalty": 1.8,
    "no_repeat_ngram_size": 1,
    "max_new_tokens": 2,
}

FAMILIES = ("llama3", "qwen2", "gpt2", "opt", "gpt_neox", "mistral")


def _tokenizer(
    words,
    *,
    specials: list[str],
    bos: str | None,
    eos: str,
    pad: str | None,
    unk: str | None,
    prepend_bos: bool,
    chat_template: str | None,
    byte_level: bool = False,
):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = [" ".join([*words, *WORDS_EXTRA])] * 4
    if byte_level:
        # GPT-2, GPT-NeoX and Qwen2 ship byte-level BPE (transformers rebuilds Qwen2's from vocab and merges).
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.train_from_iterator(
            text,
            trainer=trainers.BpeTrainer(
                vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
            ),
        )
        tokenizer.decoder = decoders.ByteLevel()
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.train_from_iterator(text, trainer=trainers.WordLevelTrainer(special_tokens=specials))
        tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if prepend_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, model_max_length=128
    )
    wrapped.chat_template = chat_template
    return wrapped


def family_tokenizer(family: str, words):
    if family == "llama3":
        template = (
            "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <|eot_id|> "
            "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
        )
        return _tokenizer(
            words,
            specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<unk>"],
            bos="<|begin_of_text|>",
            eos="<|end_of_text|>",
            pad=None,
            unk="<unk>",
            prepend_bos=True,
            chat_template=template,
        )
    if family == "qwen2":
        template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
        return _tokenizer(
            words,
            specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            unk=None,
            prepend_bos=False,
            chat_template=template,
            byte_level=True,
        )
    if family in ("gpt2", "gpt_neox"):
        return _tokenizer(
            words,
            specials=["<|endoftext|>"],
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            pad=None,
            unk="<|endoftext|>",
            prepend_bos=False,
            chat_template=None,
            byte_level=True,
        )
    if family == "opt":
        # OPT's BOS is </s>, prepended to every text; <pad> is id 1.
        return _tokenizer(
            words,
            specials=["<s>", "<pad>", "</s>", "<unk>"],
            bos="</s>",
            eos="</s>",
            pad="<pad>",
            unk="<unk>",
            prepend_bos=True,
            chat_template=None,
        )
    if family == "mistral":
        return _tokenizer(
            words,
            specials=["<unk>", "<s>", "</s>"],
            bos="<s>",
            eos="</s>",
            pad=None,
            unk="<unk>",
            prepend_bos=True,
            chat_template=None,
        )
    raise ValueError(family)


def family_config(family: str, tokenizer, hidden: int = 32):
    import transformers

    vocab = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    small = dict(num_hidden_layers=1, num_attention_heads=2, hidden_size=hidden, intermediate_size=2 * hidden)
    if family in ("llama3", "mistral", "qwen2"):
        cls = {
            "llama3": transformers.LlamaConfig,
            "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config,
        }[family]
        return cls(
            vocab_size=vocab,
            num_key_value_heads=1,
            max_position_embeddings=128,
            tie_word_embeddings=family == "qwen2",
            **small,
            **ids,
        )
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=1, n_head=2, n_positions=128, **ids)
    if family == "opt":
        return transformers.OPTConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=1,
            ffn_dim=2 * hidden,
            num_attention_heads=2,
            word_embed_proj_dim=hidden,
            max_position_embeddings=128,
            **ids,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(vocab_size=vocab, max_position_embeddings=128, **small, **ids)
    raise ValueError(family)


def build_family_model(
    out_dir: Path, family: str, words, *, seed: int = 0, generation_config: dict | None = None, hidden: int = 32
) -> Path:
    """A randomly initialised causal LM of `family` with its tokenizer (and, for llama3, a shipped
    generation_config.json with sampling settings and several EOS ids) saved to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = family_tokenizer(family, words)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, tokenizer, hidden=hidden))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    shipped = (
        generation_config
        if generation_config is not None
        else ({**LLAMA3_GENERATION_CONFIG, "eos_token_id": llama3_stop_ids(tokenizer)} if family == "llama3" else None)
    )
    if shipped is not None:
        config = {"bos_token_id": tokenizer.bos_token_id, **shipped}
        (Path(out_dir) / "generation_config.json").write_text(json.dumps(config))
    return Path(out_dir)


def llama3_stop_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")]


def family_models(family: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf.demo.task import corpus_words
    from rlhf.ppo.critic import TokenValueModel

    config = family_config(family, family_tokenizer(family, corpus_words()))
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config).eval()
    config.num_labels = 1
    critic = TokenValueModel(AutoModelForSequenceClassification.from_config(config).eval())
    return policy, critic, config.vocab_size


def family_reward_model(family: str, attention: str = "sdpa"):
    from transformers import AutoModelForSequenceClassification

    from rlhf.demo.task import corpus_words

    config = family_config(family, family_tokenizer(family, corpus_words()))
    config.num_labels = 1
    if config.pad_token_id is None:  # as the RM stage sets it from the tokenizer
        config.pad_token_id = 0
    torch.manual_seed(0)
    # Dropout off, as the shared and the separate forwards are compared on the same weights.
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attention).eval()


def ignores_custom_masks(module, query, key, value, attention_mask, **kwargs):
    """An attention kernel that takes no mask (plain causal), as flash attention's kernels are in this respect."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, **kwargs)
