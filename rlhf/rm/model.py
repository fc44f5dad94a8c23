"""The reward model as every stage uses it: loaded, scored in batches, on the scale fixed when it was trained.

InstructGPT normalises the reward model with a bias so that the demonstrations score 0 on average
(§C.2); that offset is saved beside the weights, in `reward_normalization.json`, and applied here,
so every user of the model (PPO, evaluation, win rates) sees the same scale. `normalise` sets it after training.

An ensemble (rlhf.rm.ensemble) loads as one module holding its members; each member has its own offset, so that
each scores the demonstrations 0 on average, and so does their mean. `score_texts_by_member` gives each member's
scores, `score_texts` their mean: what "the reward model's score" is for every reader but PPO, whose
`reward_aggregation` chooses how to combine them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhf.adaptation.checkpoint import load_adapted
from rlhf.attention import DEFAULT_ATTENTION
from rlhf.data.demonstrations import load_demonstrations
from rlhf.data.formatting import reward_input_ids
from rlhf.data.overlong import fit_demonstrations
from rlhf.data.rankings import Ranking
from rlhf.generation import GENERATION_CONFIG
from rlhf.io import atomic_write_json, atomic_write_text
from rlhf.models import load_tokenizer
from rlhf.rm.ensemble import RewardEnsemble, is_ensemble, member_dirs, members_of
from rlhf.shared_prompt.layout import consecutive_runs

NORMALIZATION_FILE = "reward_normalization.json"


@dataclass
class RewardNormalization:
    offset: float = 0.0  # subtracted from the raw score
    normalized_on: str = ""  # what the mean was taken over
    samples: int = 0

    def save(self, model_dir: str | Path) -> None:
        atomic_write_json(Path(model_dir) / NORMALIZATION_FILE, asdict(self))

    @classmethod
    def load(cls, model_dir: str | Path) -> RewardNormalization:
        path = Path(model_dir) / NORMALIZATION_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    @property
    def offsets(self) -> tuple[float, ...]:
        return (self.offset,)


@dataclass(frozen=True)
class EnsembleNormalization:
    """An ensemble's normalisation: each member's own (its demonstrations' mean reward is 0)."""

    members: tuple[RewardNormalization, ...]

    @property
    def offsets(self) -> tuple[float, ...]:
        return tuple(member.offset for member in self.members)


def load_reward_model(path: str, trust_remote_code: bool = False, attn_implementation: str = DEFAULT_ATTENTION):
    """(model, tokenizer, normalization) for a saved reward model, frozen and in eval mode. An ensemble's directory
    gives a `RewardEnsemble` of its members and an `EnsembleNormalization` of their offsets; `single_reward_model`
    reads its top-level model (the members' weight average) alone."""

    if not is_ensemble(path):
        return single_reward_model(path, trust_remote_code, attn_implementation)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    loaded = [single_reward_model(str(member), trust_remote_code, attn_implementation) for member in member_dirs(path)]
    return (
        RewardEnsemble([model for model, _, _ in loaded]).eval(),
        tokenizer,
        EnsembleNormalization(tuple(normalization for _, _, normalization in loaded)),
    )


def single_reward_model(path: str, trust_remote_code: bool = False, attn_implementation: str = DEFAULT_ATTENTION):
    """(model, tokenizer, normalization) of the one model saved at `path`, frozen and in eval mode."""

    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_adapted(
        path, task="reward", trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, RewardNormalization.load(path)


def pad_right(sequences: Sequence[Sequence[int]], pad_token_id: int):
    """(input_ids, attention_mask) tensors, right-padded: the score is read at the last real token."""
    import torch

    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def raw_scores(model, input_ids, attention_mask, shared_prompt=None, group_sizes=None):
    """The model's scalar output for each sequence, before normalisation, shape (N,).

    With `shared_prompt` (a `SharedPromptSupport` that covers the batch) and `group_sizes` (consecutive sequences
    with the same prompt), each group's prompt is computed once; the scores are the same to float tolerance.
    """
    if shared_prompt is not None and group_sizes is not None and shared_prompt.shares(group_sizes, attention_mask):
        from rlhf.shared_prompt.forward import shared_prompt_scores

        return shared_prompt_scores(model, input_ids, attention_mask, group_sizes)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


def member_scores(model, input_ids, attention_mask, shared_prompt=None, group_sizes=None):
    """(N, k) each member's raw score of each sequence (`raw_scores`); k = 1 for a single reward model."""
    import torch

    return torch.stack(
        [raw_scores(member, input_ids, attention_mask, shared_prompt, group_sizes) for member in members_of(model)],
        dim=1,
    )


def score_texts(
    model,
    tokenizer,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    normalization: RewardNormalization | EnsembleNormalization | None = None,
    stop_token_ids: Sequence[int] = (),
    max_length: int = 512,
    batch_size: int = 32,
    shared_prompt=None,
) -> list[float]:
    """Normalised reward of each (prompt, completion), read as `reward_input_ids` gives it and scored in batches
    without gradients; an ensemble's is its members' mean (`score_texts_by_member`). An input over `max_length`
    loses the start of its prompt, never the end of its response (the stages fit their data to the limit first, so
    that this does not happen to what they train on).

    `shared_prompt` (a `SharedPromptSupport`): consecutive pairs with the same prompt share one copy of it.
    """
    by_member = score_texts_by_member(
        model,
        tokenizer,
        prompts,
        completions,
        normalization=normalization,
        stop_token_ids=stop_token_ids,
        max_length=max_length,
        batch_size=batch_size,
        shared_prompt=shared_prompt,
    )
    if len(by_member) == 1:
        return by_member[0]
    return [sum(scores) / len(scores) for scores in zip(*by_member)]


def score_texts_by_member(
    model,
    tokenizer,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    normalization: RewardNormalization | EnsembleNormalization | None = None,
    stop_token_ids: Sequence[int] = (),
    max_length: int = 512,
    batch_size: int = 32,
    shared_prompt=None,
) -> list[list[float]]:
    """`score_texts` of each member: scores[m][i] is member m's normalised reward of pair i (one row for a single
    reward model), each member less its own offset."""
    import torch

    members = len(members_of(model))
    offsets = torch.tensor(normalization.offsets if normalization else (0.0,) * members)
    if len(offsets) != members:
        raise ValueError(f"{len(offsets)} normalisation offsets for {members} reward models")
    rows: list[list[float]] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids = [
                reward_input_ids(tokenizer, p, c, stop_token_ids=stop_token_ids)[-max_length:]
                for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size])
            ]
            input_ids, attention_mask = pad_right(ids, tokenizer.pad_token_id)
            raw = member_scores(
                model,
                input_ids.to(device),
                attention_mask.to(device),
                shared_prompt,
                consecutive_runs(prompts[start : start + batch_size]),
            )
            rows.extend((raw.float().cpu() - offsets).tolist())
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(members)]


def normalization_records(
    config, inputs, train_rankings: Sequence[Ranking] = (), stop_token_ids: Sequence[int] = ()
) -> tuple[list[dict], str]:
    """(prompt/completion records, their source): the config's file, else the SFT parent's demonstrations (text or
    chat), else the best-ranked training completions; those over max_length follow the `overlong` policy."""

    source = config.normalization_file
    if not source and inputs.parent is not None:
        parent_train_file = inputs.parent.config.get("train_file", "")
        if parent_train_file and Path(parent_train_file).exists():
            source = parent_train_file
    if source:
        records = load_demonstrations(source)[: config.normalization_samples]
        fitted = fit_demonstrations(
            records,
            inputs.tokenizer,
            max_length=config.max_length,
            policy=config.overlong,
            file=source,
            stop_token_ids=stop_token_ids,
        )
        if fitted.over:
            print(f"normalisation: {source}: {fitted.summary()}", flush=True)
        return fitted.kept, source
    best = [{"prompt": r.prompt, "completion": r.completions[r.ranks.index(min(r.ranks))]} for r in train_rankings]
    return best[: config.normalization_samples], "best-ranked training completions"


def normalise(
    model_dir: str | Path, config, inputs, train_rankings: Sequence[Ranking] = (), stop_token_ids: Sequence[int] = ()
) -> RewardNormalization:
    """Save the bias that makes the mean reward of the demonstrations 0 (InstructGPT §C.2), for the one model saved
    at `model_dir` (an ensemble normalises each member and its average so)."""
    model, tokenizer, _ = single_reward_model(
        str(model_dir), trust_remote_code=config.trust_remote_code, attn_implementation=config.attn_implementation
    )
    records, source = normalization_records(config, inputs, train_rankings, stop_token_ids)
    raw = score_texts(
        model,
        tokenizer,
        [r["prompt"] for r in records],
        [r["completion"] for r in records],
        stop_token_ids=stop_token_ids,
        max_length=config.max_length,
    )
    normalization = RewardNormalization(offset=sum(raw) / len(raw), normalized_on=source, samples=len(raw))
    normalization.save(model_dir)
    return normalization


def keep_stop_tokens(base_dir: str | Path, model_dir: str | Path) -> None:
    """Copy the base model's generation_config.json (its stop tokens) beside the reward model's weights, so that a
    user of the reward model ends responses as the RM stage did (`stop_token_ids_of`), whatever its policy."""

    shipped = Path(base_dir) / GENERATION_CONFIG
    if shipped.is_file() and not (Path(model_dir) / GENERATION_CONFIG).exists():
        atomic_write_text(Path(model_dir) / GENERATION_CONFIG, shipped.read_text())
