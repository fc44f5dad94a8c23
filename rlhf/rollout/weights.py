"""A training model's weights into its vLLM engine, with no disk round trip and no second whole copy on a rank.

Under ZeRO-3 every rank gathers one module at a time from the partitions (`gathered_state`, the walk the
partitioned save makes), and each of its tensors is copied into the engine's shared memory before the next module
is gathered. Every rank does so at once (a collective) and feeds its own engine. A LoRA model sends its merged
weights, W + (alpha/r)·B·A under the base layer's name: the engine holds a plain model, so the adapter costs it
nothing at sampling time (vLLM's LoRA path would run the adapter at every token).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rlhf.rollout.vllm_engine import VLLMEngine


def sync_weights(engine: VLLMEngine, model) -> int:
    """Send every weight of `model` (a transformers model, or its peft wrapper) to `engine`; returns the bytes.
    Every rank calls it under ZeRO-3."""
    from rlhf.adaptation.apply import is_peft_model
    from rlhf.adaptation.partitioned_save import gathered_state

    method = "lora" if is_peft_model(model) else "full"
    plain = model.get_base_model() if is_peft_model(model) else model
    state = ((key, tensor) for key, tensor in gathered_state(model, method, every_rank=True) if tensor is not None)
    return engine.load_weights(with_tied_names(state, tied_names(plain)))


def tied_names(model) -> dict[str, list[str]]:
    """{first name: its other names} of parameters shared under several names (tied input and output embeddings).
    The saved state holds a tied weight once; vLLM's reload rebuilds each layer from what it is sent, so an output
    embedding left out would keep the random weights it started with."""
    first: dict[int, str] = {}
    others: dict[str, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            others.setdefault(first[id(parameter)], []).append(name)
        else:
            first[id(parameter)] = name
    return others


def with_tied_names(state: Iterable[tuple[str, object]], aliases: dict[str, list[str]]) -> Iterator[tuple[str, object]]:
    for key, tensor in state:
        yield key, tensor
        for alias in aliases.get(key, ()):
            yield alias, tensor
