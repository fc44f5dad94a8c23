"""Where PPO's responses come from (`rollout_engine`): the actor itself with `generate` (`HFRollouts`), or a
vLLM engine beside each rank (`VLLMRollouts`), whose weights follow the actor's after every update.

Either way the old log-probabilities are the actor's own recomputation (rlhf.ppo.experience.score), as in
OpenRLHF and verl: the engine only picks the tokens. The engine's own log-probabilities of them are kept for the
mismatch metrics and the optional truncated importance sampling (rlhf.ppo.mismatch).

Seeds: the engine samples request i of rank r at step s with seed_of(seed, "train", s, r, i), so a resumed run
asks for the same samples as an uninterrupted one (`HFRollouts` draws from torch's generator instead, whose
state the checkpoints keep).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlhf import distributed
from rlhf.ppo.logprobs import SamplingSettings


class HFRollouts:
    """The actor samples with transformers' `generate` (KV cache; ZeRO-3 gathered once or per step)."""

    engine = None

    def __init__(self, generation_config, zero3_generation: str):
        self.generation_config, self.zero3_generation = generation_config, zero3_generation

    def generate(self, actor, batch, seed_parts: tuple) -> tuple[torch.Tensor, None]:
        from rlhf.ppo import experience

        return experience.generate(actor, batch, self.generation_config, self.zero3_generation), None

    def sync(self, actor) -> float | None:
        return None  # the actor is the sampler

    def release_memory(self) -> None:
        pass

    def close(self) -> None:
        pass


class VLLMRollouts:
    """A vLLM engine samples; `sync` copies the actor's weights into it (every rank its own engine)."""

    def __init__(self, engine, sampling: SamplingSettings, tokenizer, sleep_mode: bool = False):
        from rlhf.rollout.sampling import sampling_for

        self.engine, self.sleep_mode, self.pad_token_id = engine, sleep_mode, tokenizer.pad_token_id
        self.asleep = False
        self.sampling = sampling_for(
            tokenizer,
            max_new_tokens=sampling.max_new_tokens,
            stop_token_ids=sampling.stops(tokenizer),
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            logprobs=True,
        )

    def generate(self, actor, batch, seed_parts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) response ids, padded after the stop token as `generate` pads them, and (B, T) the engine's
        log-probabilities of them (0 on padding)."""
        from rlhf.rollout.sampling import seed_of

        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch.query_ids, batch.query_mask)]
        seeds = [seed_of(*seed_parts, distributed.global_rank(), row) for row in range(len(prompts))]
        answers = self.engine.generate(prompts, self.sampling, seeds)
        return padded(answers, self.pad_token_id)

    def release_memory(self) -> None:
        """vllm_sleep_mode: after a training rollout, free the engine's KV cache and weights (vLLM's sleep level 2)
        while the four models score and train; the next `sync` brings the weights back."""
        if self.sleep_mode:
            self.engine.sleep(level=2)
            self.asleep = True

    def sync(self, actor) -> float:
        """Copy the actor's weights into the engine; returns the seconds it took (every rank, at once)."""
        from rlhf.rollout.weights import sync_weights

        started = time.perf_counter()
        if self.asleep:
            self.engine.wake_up(["weights"])  # room for the weights alone while they arrive (vLLM's RLHF order)
        sync_weights(self.engine, actor.module)
        if self.asleep:
            self.engine.wake_up(["kv_cache"])
            self.asleep = False
        return time.perf_counter() - started

    def close(self) -> None:
        self.engine.close()


def padded(answers: list[tuple[list[int], list[float] | None]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's answers as (B, T) ids right-padded with `pad_token_id` and (B, T) log-probabilities (0 there)."""
    length = max(1, max(len(ids) for ids, _ in answers))
    response_ids = torch.full((len(answers), length), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((len(answers), length), dtype=torch.float32)
    for row, (ids, values) in enumerate(answers):
        response_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if values is not None:
            logprobs[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return response_ids, logprobs


def start_vllm_engine(config, inputs):
    """The PPO stage's engine, started on the actor's model with random weights (the first sync, after any
    resume, brings the actor's); it loads while the DeepSpeed engines are built. One-line errors first:
    vLLM missing, sleep mode without a GPU, prompt and response over the model's length."""
    from rlhf.models import max_positions
    from rlhf.rollout.sampling import start_engine
    from rlhf.rollout.settings import check_model_length, check_sleep_mode, vllm_python

    vllm_python()
    check_sleep_mode(config.vllm_sleep_mode)
    path = inputs.paths["actor"]
    max_model_len = check_model_length(
        config.max_prompt_length, config.max_new_tokens, max_positions(path, config.trust_remote_code)
    )
    return start_engine(
        path,
        max_model_len=max_model_len,
        max_num_seqs=config.rollout_batch_size,
        dtype="bfloat16" if config.bf16 else "float32",
        seed=config.seed,
        trust_remote_code=config.trust_remote_code,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        sleep_mode=config.vllm_sleep_mode,
        dummy_weights=True,
    )


def make_rollouts(
    config, engine, sampling: SamplingSettings, tokenizer, generation_config, zero3_generation: str
) -> Any:
    if engine is None:
        return HFRollouts(generation_config, zero3_generation)
    return VLLMRollouts(engine.wait_ready(), sampling, tokenizer, config.vllm_sleep_mode)
