"""The forwards PPO runs on prompt + response sequences: the policy's logits and the critic's values at the positions
that predicted each response token, padded, packed or behind one shared prompt; in micro-batches; and releasing
what a ZeRO-3 forward left gathered.

Both making experience (rlhf.ppo.experience, rlhf.ppo.engines) and the update (rlhf.ppo.update) run them.
"""

from __future__ import annotations

import torch

from rlhf import probes
from rlhf.ppo import packing
from rlhf.ppo.logprobs import position_ids_from_mask
from rlhf.shared_prompt.forward import OFF, SharedPromptSupport, forward_shared
from rlhf.shared_prompt.layout import runs_of_equal_rows


def sequence_inputs(query_ids, query_mask, response_ids, response_mask) -> dict[str, torch.Tensor]:
    """Prompt + response as one left-padded sequence, with the positions generation used."""
    attention_mask = torch.cat([query_mask, response_mask.to(query_mask.dtype)], dim=1)
    return {
        "input_ids": torch.cat([query_ids, response_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
    }


def causal_lm_logits(model):
    """forward(**inputs) -> logits of a causal LM. No KV cache: nothing follows these forwards, a checkpointed
    layer would refuse the cache anyway, and with one transformers would take a packed row for one sequence."""
    return lambda **inputs: model(**inputs, use_cache=False).logits


def at_response_positions(
    forward,
    inputs: dict[str, torch.Tensor],
    query_length: int,
    row_tokens: int | None = None,
    shared_prompt: SharedPromptSupport = OFF,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """forward(**inputs)'s per-token outputs (B, T, ...) at the positions that predicted each response token:
    position Q-1+t predicts response token t. Padding-free (`packing`) when `row_tokens` is set; 0 where the
    padded batch holds padding then.

    With `shared_prompt` (the model passed its check), rollouts with the same prompt in consecutive rows (a
    prompt's samples_per_prompt responses) run behind one copy of it (`rlhf.shared_prompt`), in rows of at most
    max(a group, row_tokens) tokens; `dtype` is the model's, for the attention mask.
    """
    start, stop = query_length - 1, inputs["input_ids"].shape[1] - 1
    groups = runs_of_equal_rows(inputs["input_ids"][:, :query_length])
    if shared_prompt.shares(groups, inputs["attention_mask"]):
        return forward_shared(forward, inputs, groups, start, stop, dtype, row_tokens or 0)
    if row_tokens is not None:
        return packing.forward_packed(forward, inputs, row_tokens, start, stop)
    return forward(**inputs)[:, start:stop]


def response_logits(
    model,
    inputs: dict[str, torch.Tensor],
    query_length: int,
    row_tokens: int | None = None,
    shared_prompt: SharedPromptSupport = OFF,
) -> torch.Tensor:
    """(B, T, V) logits that predicted each response token (`at_response_positions`)."""
    return at_response_positions(
        causal_lm_logits(model), inputs, query_length, row_tokens, shared_prompt, probes.parameter_dtype(model)
    )


def response_values(
    critic,
    inputs: dict[str, torch.Tensor],
    query_length: int,
    row_tokens: int | None = None,
    shared_prompt: SharedPromptSupport = OFF,
) -> torch.Tensor:
    """(B, T) critic values V(s_t) at the positions that predicted each response token (`at_response_positions`)."""
    return at_response_positions(
        critic, inputs, query_length, row_tokens, shared_prompt, probes.parameter_dtype(critic)
    )


def in_micro_batches(forward, rows: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor:
    """forward(part) for successive parts of `micro_batch_size` rows of every tensor in `rows` (the last part may
    be shorter; 0: one part), concatenated along the batch.

    The scoring passes run on the whole rollout batch; in one forward its (B, T, V) logits would be the largest
    tensor of the run. In parts only one part's logits exist at a time. Every rank holds the same number of
    rollouts, so under ZeRO-3 every rank makes the same number of forwards and joins the same gathers.
    """
    total = next(iter(rows.values())).shape[0]
    size = micro_batch_size if micro_batch_size > 0 else max(total, 1)
    return torch.cat(
        [forward({key: value[start : start + size] for key, value in rows.items()}) for start in range(0, total, size)]
    )


def release_gathered(engine) -> None:
    """Re-partition whatever a ZeRO-3 engine's last forward left gathered (a no-op for other stages).

    Once ZeRO-3 has traced a model, a forward can end with up to stage3_max_live_parameters of it still gathered,
    prefetched for that model's next forward; scoring runs four models one after another, so each of them would
    hold its own (benchmarks/RESULTS.md, section 4b).
    The next forward gathers them again, as it would after any other model ran.
    """
    release = getattr(getattr(engine, "optimizer", None), "empty_partition_cache", None)
    if release is not None and getattr(engine, "zero_optimization_stage", lambda: 0)() == 3:
        release()
