"""Text in, text out through a vLLM engine: the evaluations' and the labels export's sampling when
`rollout_engine` is vllm, with exactly what `rlhf.generation.generate_responses` does on the other engine
(the same prompt ids, stop tokens and suppressed padding; responses decoded in context).

Seeds: response i of a call is sampled with seed_of(seed, i), so a prompt's response depends on the weights,
the prompt, the seed and its place, never on the batch around it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rlhf.data.formatting import encode_prompts, response_text
from rlhf.models import max_positions
from rlhf.rollout.settings import check_model_length, cpu_kv_cache_bytes, vllm_python
from rlhf.rollout.vllm_engine import EngineSampling, EngineSettings, VLLMEngine


def seed_of(*parts: Any) -> int:
    """A 63-bit request seed from any parts (the run's seed, the step, the rank, the row); the same on every run."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def start_engine(
    model_path: str,
    *,
    max_model_len: int,
    max_num_seqs: int,
    dtype: str = "float32",
    seed: int = 0,
    trust_remote_code: bool = False,
    gpu_memory_utilization: float = 0.3,
    sleep_mode: bool = False,
    dummy_weights: bool = False,
) -> VLLMEngine:
    """A started (not yet ready) engine on `model_path`; the caller waits with `wait_ready()`, after other work.
    `dummy_weights`: random weights of the model's shape, for an engine whose weights are synced before it samples."""

    settings = EngineSettings(
        model=model_path,
        dtype=dtype,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        seed=seed,
        trust_remote_code=trust_remote_code,
        gpu_memory_utilization=gpu_memory_utilization,
        sleep_mode=sleep_mode,
        cpu_kv_cache_bytes=cpu_kv_cache_bytes(model_path, max_model_len, max_num_seqs, dtype, trust_remote_code),
        load_format="dummy" if dummy_weights else "auto",
    )
    return VLLMEngine(settings, vllm_python()).start()


def start_engine_for_prompts(
    model_path: str,
    tokenizer,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> VLLMEngine:
    """An engine (started, not yet ready) with the checkpoint's weights in its own dtype, holding the longest of
    `prompts` and its response: no longer, so that a CPU's KV cache stays the size of the batch."""

    longest = max(int(encode_prompts(tokenizer, [prompt])["attention_mask"].sum()) for prompt in prompts)
    max_model_len = check_model_length(longest, max_new_tokens, max_positions(model_path, trust_remote_code))
    return start_engine(
        model_path,
        max_model_len=max_model_len,
        max_num_seqs=batch_size,
        dtype="auto",
        seed=seed,
        trust_remote_code=trust_remote_code,
    )


def sampling_for(
    tokenizer,
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logprobs: bool = False,
) -> EngineSampling:
    """The engine's sampling for these settings, padding suppressed unless it ends responses (as
    `rlhf.ppo.logprobs.sampling_settings_for` does for `generate`)."""
    stops = tuple(stop_token_ids) or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    pad = tokenizer.pad_token_id
    suppressed = (pad,) if pad is not None and pad not in stops else ()
    return EngineSampling(
        max_new_tokens=max_new_tokens,
        stop_token_ids=stops,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        suppressed_token_ids=suppressed,
        logprobs=logprobs,
    )


def engine_responses(
    engine: VLLMEngine, tokenizer, prompts: Sequence[Any], sampling: EngineSampling, seed: int, batch_size: int = 128
) -> list[str]:
    """One response per prompt, decoded in context without special tokens (`response_text`)."""

    responses: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = encode_prompts(tokenizer, prompts[start : start + batch_size])
        ids = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
        answers = engine.generate(ids, sampling, [seed_of(seed, start + i) for i in range(len(ids))])
        responses.extend(response_text(tokenizer, prompt, answer) for prompt, (answer, _) in zip(ids, answers))
    return responses
