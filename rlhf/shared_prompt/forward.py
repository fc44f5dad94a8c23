"""Running a model on shared-prompt rows, and the start-up check of whether it may.

The layout (`layout`) only holds if the model's attention takes the custom 4D mask as given and its positions from
`position_ids`. transformers' decoder models do under `sdpa` and `eager` (a 4D mask is used as it comes);
flash attention's kernels take no dense mask at all, and other code may ignore one or build its positions from
the mask. `check_support` runs a prompt with two responses both ways once, before training, on every rank;
models that fail it keep one sequence per response, and the caller says so in one line.

A reward model's sequence-classification forward applies its scalar head at every position and then keeps one
position per row (the last non-padding one), which in a shared row is not where the responses end. The head's
output at every position is taken as the head returns it (`per_position_scores`), and each response's score read
at its own last token. The model is still called as a whole, through whatever wraps it (the Trainer's DeepSpeed
engine or DDP, peft), so that ZeRO-3 gathers the parameters and DDP reduces the gradients as for any forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rlhf import _compat, distributed, probes
from rlhf.adaptation.apply import is_peft_model, reward_head_names
from rlhf.attention import is_flash_attention
from rlhf.shared_prompt.layout import shared_prompt_rows

FALLBACK = "each response runs with its own copy of the prompt"


@dataclass(frozen=True)
class SharedPromptSupport:
    """Whether a model's forwards may share prompts, why not when not, and up to what length."""

    enabled: bool
    reason: str = ""  # why not, for the one line that says so
    window: int | None = None  # a sliding window: only batches whose sequences fit it share (mask cannot say it)

    def covers(self, longest: int) -> bool:
        """Whether a batch whose longest sequence has `longest` tokens may run shared: within a sliding window
        the custom mask (full causal within a sequence) and the model's window mask agree."""
        return self.enabled and (self.window is None or longest <= self.window)

    def shares(self, group_sizes: Sequence[int], attention_mask: torch.Tensor) -> bool:
        """Whether a padded batch in groups of `group_sizes` runs shared: the model may (`covers`) and some
        group has a prompt to share (a batch of lone sequences would gain nothing)."""
        return max(group_sizes, default=1) > 1 and self.covers(int(attention_mask.sum(dim=1).max()))

    def line(self, what: str) -> str:
        return f"shared_prompt_forward: the {what}: {self.reason}; {FALLBACK}"


OFF = SharedPromptSupport(False, "turned off (shared_prompt_forward: false)")


def unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model inside a DeepSpeed engine, DDP and peft."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model.get_base_model() if is_peft_model(model) else model


def scalar_head(model: nn.Module) -> nn.Module:
    """The reward model's scalar head (`score`; with LoRA, peft's trainable copy in its place), found as the
    adaptation finds it: the one top-level module outside the transformer body."""
    inner = unwrapped(model)
    names = reward_head_names(inner)
    if len(names) != 1:
        raise ValueError(f"a reward model needs exactly one scalar head; {type(inner).__name__} has {names}")
    return getattr(inner, names[0])


@contextlib.contextmanager
def outputs_of(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """The module's outputs during the block, in call order, as it returned them (in the autograd graph)."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def per_position_scores(model: nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    """(R, C) a reward model's scalar output at every position of its input rows: its head's output, which its
    own forward then pools to one position per row."""
    with outputs_of(scalar_head(model)) as outputs:
        model(**inputs, use_cache=False)
    return outputs[-1][..., 0]


def rows_inputs(rows, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "input_ids": rows.input_ids,
        "attention_mask": rows.attention_mask(dtype),
        "position_ids": rows.position_ids,
    }


def shared_prompt_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, group_sizes: Sequence[int]
) -> torch.Tensor:
    """(N,) a reward model's raw score of each sequence of a padded batch whose consecutive groups of
    `group_sizes` sequences share their prompts, each group's prompt computed once."""
    rows = shared_prompt_rows(input_ids, attention_mask, group_sizes)
    scores = per_position_scores(model, **rows_inputs(rows, probes.parameter_dtype(model)))
    return scores[rows.last_tokens()]


def forward_shared(
    forward: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    group_sizes: Sequence[int],
    start: int,
    stop: int,
    dtype: torch.dtype,
    row_tokens: int = 0,
) -> torch.Tensor:
    """forward(input_ids=, attention_mask=, position_ids=) -> (R, C, ...) per-token outputs on shared-prompt rows,
    returned for the padded columns [start, stop) of `inputs` as (B, stop - start, ...); 0 at padding."""
    rows = shared_prompt_rows(inputs["input_ids"], inputs["attention_mask"], group_sizes, row_tokens)
    return rows.unpack(forward(**rows_inputs(rows, dtype)), start, stop)


@torch.no_grad()
def keeps_responses_apart(forward: Callable[..., torch.Tensor], module: nn.Module, vocab_size: int, device) -> bool:
    """Whether forward(input_ids=, attention_mask=, position_ids=)'s per-token outputs of a prompt with two
    responses in one shared row equal those of each sequence run alone, as the model runs it by default."""
    # Five tokens at most, within any sliding window a model would have.
    prompt = [(7 * i + 3) % vocab_size for i in range(3)]
    responses = [[(5 * i + 2) % vocab_size for i in range(2)], [(3 * i + 1) % vocab_size for i in range(2)]]
    sequences = [prompt + response for response in responses]
    width = max(map(len, sequences))
    input_ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    with probes.without_dropout(module):
        shared = forward_shared(
            forward, {"input_ids": input_ids, "attention_mask": mask}, [2], 0, width, probes.parameter_dtype(module)
        )
        alone = [
            forward(
                input_ids=torch.tensor([s], device=device),
                attention_mask=torch.ones((1, len(s)), dtype=torch.long, device=device),
            )[0]
            for s in sequences
        ]
    return all(probes.same_outputs(shared[row, : len(s)], alone[row], module) for row, s in enumerate(sequences))


def check_support(
    forward: Callable[..., torch.Tensor], module: nn.Module, model_config, device, *, across_ranks: bool
) -> SharedPromptSupport:
    """Whether shared-prompt forwards give `forward` its own outputs, decided before any training.

    `across_ranks`: every rank runs the same check (ZeRO-3 gathers for it) and the most cautious answer wins;
    a model loaded on one rank alone (evaluation on rank 0) decides alone.
    """
    text_config = model_config.get_text_config()
    attention = _compat.attention_implementation(model_config)
    if is_flash_attention(attention):
        honoured, reason = False, f"{attention}'s kernels take no custom attention mask"
    else:
        try:
            honoured = keeps_responses_apart(forward, module, text_config.vocab_size, device)
            reason = "" if honoured else "its attention does not keep the responses apart under a custom mask"
        except Exception as error:  # a model's own code refusing a 4D mask or position_ids: not ours to fix
            first_line = str(error).splitlines()[0] if str(error) else ""
            honoured = False
            reason = f"its forward failed on a shared-prompt row ({type(error).__name__}: {first_line})"
    if across_ranks:
        agreed = distributed.all_ranks(honoured)
        if honoured and not agreed:
            reason = "another rank's check failed"
        honoured = agreed
    return SharedPromptSupport(honoured, reason, getattr(text_config, "sliding_window", None) or None)


def reward_model_support(model: nn.Module, *, across_ranks: bool) -> SharedPromptSupport:
    """`check_support` for a reward model's scores, through whatever wraps it."""
    if isinstance(model, nn.DataParallel):
        # Its replicas run parts of the rows in threads, each through the one head: the outputs read there would
        # be one replica's part.
        return SharedPromptSupport(
            False,
            "torch's DataParallel splits its rows over several GPUs (launch with "
            "torchrun or deepspeed for one process per GPU)",
        )
    device = next(model.parameters()).device
    return check_support(
        lambda **inputs: per_position_scores(model, **inputs),
        model,
        unwrapped(model).config,
        device,
        across_ranks=across_ranks,
    )
