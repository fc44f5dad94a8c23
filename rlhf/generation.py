"""Batched generation from prompts (text or chat messages), with left padding and the KV cache.

A checkpoint's own generation_config.json never changes how we sample: `generate` fills every field of the
config it is given that is left unset from the model's `generation_config` (a shipped `repetition_penalty`,
`no_repeat_ngram_size`, `temperature`...), so generation runs with a neutral one in its place
(`neutral_generation_defaults`). Its stop tokens are kept on purpose: Llama 3 Instruct ends a turn with
`<|eot_id|>`, which is not the tokenizer's EOS, and lists several EOS ids (`stop_token_ids`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from rlhf.data.formatting import encode_prompts, response_text
from rlhf.errors import ConfigError

GENERATION_CONFIG = "generation_config.json"


def stop_token_ids(tokenizer, model=None) -> tuple[int, ...]:
    """Every token that ends a response: the tokenizer's EOS first, then the EOS ids of the model's
    generation config (an int or a list), without repeats."""
    shipped = getattr(_generation_model(model), "generation_config", None) if model is not None else None
    return _with_eos(tokenizer, getattr(shipped, "eos_token_id", None))


def stop_token_ids_of(model_path: str, tokenizer) -> tuple[int, ...]:
    """`stop_token_ids` of a saved model, read from its directory's generation_config.json without loading it:
    what a policy trained from that directory stops on (a reward model's directory carries its policy's)."""
    from pathlib import Path

    from transformers import GenerationConfig

    if not (Path(model_path) / GENERATION_CONFIG).is_file():
        return _with_eos(tokenizer, None)
    try:
        shipped = GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{Path(model_path) / GENERATION_CONFIG}: cannot be read ({first_line})") from None
    return _with_eos(tokenizer, shipped.eos_token_id)


def _with_eos(tokenizer, listed) -> tuple[int, ...]:
    ids: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if listed is not None:
        ids.extend([listed] if isinstance(listed, int) else list(listed))
    return tuple(dict.fromkeys(int(i) for i in ids))


def _generation_model(model):
    """The innermost model that `generate` reads its generation_config from (through peft's wrappers)."""
    from transformers import GenerationMixin

    found = [module for module in model.modules() if isinstance(module, GenerationMixin)]
    return found[-1] if found else model


@contextlib.contextmanager
def neutral_generation_defaults(model) -> Iterator[None]:
    """For the block, every generating (sub)module holds a default GenerationConfig, so that what `generate`
    does not get from us is transformers' neutral default, never a setting saved with the model."""
    from transformers import GenerationConfig, GenerationMixin

    swapped = [
        (module, module.generation_config)
        for module in model.modules()
        if isinstance(module, GenerationMixin) and getattr(module, "generation_config", None) is not None
    ]
    for module, _ in swapped:
        module.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for module, saved in swapped:
            module.generation_config = saved


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 32,
    progress: str = "",
) -> list[str]:
    """One response per prompt, decoded in context without special tokens (`response_text`, so that the reward
    model reads it back as the tokens the policy wrote); any of the checkpoint's stop tokens ends it.
    A non-empty `progress` names a progress bar over the prompts."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else {}
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(stop_token_ids(tokenizer, model)) or None,
        **settings,
    )
    was_training = model.training
    model.eval()
    responses: list[str] = []
    bar = tqdm(total=len(prompts), desc=progress, unit="response", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(prompts), batch_size):
            batch = encode_prompts(tokenizer, prompts[start : start + batch_size]).to(model.device)
            with torch.no_grad(), neutral_generation_defaults(model):
                output = model.generate(**batch, generation_config=generation_config)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            responses.extend(
                response_text(tokenizer, ids[mask.bool()].tolist(), response.tolist())
                for ids, mask, response in zip(batch["input_ids"], batch["attention_mask"], new_tokens)
            )
            bar.update(len(new_tokens))
    finally:
        bar.close()
        model.train(was_training)
    return responses
