"""Sampling K responses per prompt from a policy, for people to rank (InstructGPT's labeling loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sample_k_responses(
    policy: str,
    prompts: list[Any],
    *,
    k: int,
    registry_dir: str = "",
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 128,
    trust_remote_code: bool = False,
    top_k: int = 0,
    rollout_engine: str = "hf",
) -> list[tuple[Any, list[str]]]:
    """(prompt, k sampled responses) for each prompt; duplicates are removed later by the exporters (best-of-N,
    rlhf.evaluate, keeps them: they are samples of the policy like any other). `rollout_engine` vllm samples on a
    vLLM engine started for the call (the same samples need the same engine, seed and, for hf, batch size)."""
    from rlhf.models import load_tokenizer
    from rlhf.registry import Registry, resolve_model

    path, _ = resolve_model(policy, Registry(registry_dir or None))
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    repeated = [prompt for prompt in prompts for _ in range(k)]
    settings = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )
    sample = _vllm_samples if rollout_engine == "vllm" else _hf_samples
    responses = sample(path, tokenizer, repeated, **settings)
    return [(prompt, responses[i * k : (i + 1) * k]) for i, prompt in enumerate(prompts)]


def _hf_samples(
    path: str, tokenizer, prompts: list[Any], *, seed: int, trust_remote_code: bool, **settings
) -> list[str]:
    import torch

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.generation import generate_responses

    model = load_adapted(path, task="causal_lm", trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    return generate_responses(model, tokenizer, prompts, do_sample=True, progress="sampling responses", **settings)


def _vllm_samples(
    path: str,
    tokenizer,
    prompts: list[Any],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    batch_size: int,
    trust_remote_code: bool,
) -> list[str]:
    from rlhf.generation import stop_token_ids_of
    from rlhf.rollout.sampling import engine_responses, sampling_for, start_engine_for_prompts

    engine = start_engine_for_prompts(
        path,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    with engine.wait_ready():
        settings = sampling_for(
            tokenizer,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_token_ids_of(path, tokenizer),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        return engine_responses(engine, tokenizer, prompts, settings, seed, batch_size)


def rankable(items: list[tuple[Any, list[str]]]) -> tuple[list[tuple[Any, list[str]]], dict[str, int]]:
    """The samples worth a labeler's time: empty responses dropped, duplicates merged, at least 2 left.

    A policy can answer with nothing or say the same thing twice; neither gives a comparison, so they are
    left out here and counted, rather than failing the export.
    """
    kept, dropped = (
        [],
        {"empty responses": 0, "duplicate responses": 0, "prompts with fewer than 2 distinct responses": 0},
    )
    for prompt, responses in items:
        non_empty = [text for text in responses if text.strip()]
        distinct = list(dict.fromkeys(non_empty))
        dropped["empty responses"] += len(responses) - len(non_empty)
        dropped["duplicate responses"] += len(non_empty) - len(distinct)
        if len(distinct) < 2:
            dropped["prompts with fewer than 2 distinct responses"] += 1
            continue
        kept.append((prompt, distinct))
    return kept, {reason: count for reason, count in dropped.items() if count}


def write_labeling_tasks(items, format: str, output: str, *, seed: int = 0) -> tuple[Path, Path]:
    """Tasks at `output`, and the tool's labeling config beside it (Label Studio XML, Argilla settings JSON)."""
    from rlhf.labels import exporters

    if format == "label-studio":
        return exporters.write_label_studio_export(items, output, seed=seed)
    return exporters.write_argilla_export(items, output, seed=seed)
