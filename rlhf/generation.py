"""Batched generation from prompts (text or chat messages), with left padding and the KV cache."""

from __future__ import annotations

from typing import Any, Sequence

from rlhf.data.formatting import encode_prompts


def generate_responses(model, tokenizer, prompts: Sequence[Any], *, max_new_tokens: int = 32,
                       do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       batch_size: int = 32) -> list[str]:
    """One response per prompt, decoded without special tokens."""
    import torch

    was_training = model.training
    model.eval()
    responses: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = encode_prompts(tokenizer, prompts[start:start + batch_size]).to(model.device)
            with torch.no_grad():
                output = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
                    temperature=temperature if do_sample else None, top_k=top_k if do_sample else None,
                    top_p=top_p if do_sample else None, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            responses.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return responses
