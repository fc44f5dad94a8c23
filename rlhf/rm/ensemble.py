"""A reward-model ensemble (Coste et al. 2023): k reward models trained alike but for their seed, kept as one.

On disk, one directory, registered as one entry:

    ensemble.json          {"members": k, "format_version": 1}: the mark of an ensemble
    members/0 ... k-1/     each member, a whole reward model with its own reward_normalization.json
    config.json, model.safetensors, tokenizer, reward_normalization.json, ...
                           the members' weight average (`average_members`): what a reader that knows nothing of
                           ensembles loads, and the PPO critic's start

Every member is trained from the same start (the SFT policy), so their weights stay close enough for their
uniform average to score nearly as their mean does (WARM, Ramé et al. 2024; RESULTS.md section 10 measures it on
the demo). That average is the critic's start: InstructGPT starts the value model from the reward model, and with
an ensemble the reward is (an aggregate of) the members' mean; one model's worth of weights, no extra training.

Loaded for scoring (`rlhf.rm.model.load_reward_model`), an ensemble is a `RewardEnsemble`: one module holding the
k members, so that one DeepSpeed engine (ZeRO-3 included) holds them all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from rlhf.adaptation.checkpoint import load_adapted, save_adapted
from rlhf.attention import DEFAULT_ATTENTION
from rlhf.generation import GENERATION_CONFIG
from rlhf.io import atomic_directory
from rlhf.models import load_tokenizer

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
FORMAT_VERSION = 1


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding an ensemble (its ensemble.json)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def member_dirs(path: str | os.PathLike) -> list[Path]:
    """The members' directories of the ensemble at `path`, in order; [path] for a single reward model."""
    path = Path(path)
    if not is_ensemble(path):
        return [path]
    count = json.loads((path / ENSEMBLE_FILE).read_text())["members"]
    return [path / MEMBERS_DIR / str(index) for index in range(count)]


def write_ensemble_file(directory: Path, members: int) -> None:
    (directory / ENSEMBLE_FILE).write_text(json.dumps({"members": members, "format_version": FORMAT_VERSION}) + "\n")


class RewardEnsemble(nn.Module):
    """k reward models as one module; `rlhf.rm.model.member_scores` runs each on the same batch."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def config(self):
        """The members' transformers config (they share their architecture): what callers read of one model."""
        return self.members[0].config


def members_of(model: nn.Module) -> list[nn.Module]:
    """The models whose scores make `model`'s: an ensemble's members, or the model itself."""
    return list(model.members) if isinstance(model, RewardEnsemble) else [model]


def averaged_state_dict(member_weights: Sequence[dict]) -> dict:
    """The uniform average θ̄ = (1/k) Σ_m θ_m of k state dicts with the same keys and shapes (WARM, Ramé et al.
    2024), each tensor averaged in float32 and returned in its own dtype."""
    if not member_weights:
        raise ValueError("nothing to average")
    keys = set(member_weights[0])
    for weights in member_weights[1:]:
        if set(weights) != keys:
            raise ValueError(f"members hold different weights: {sorted(keys ^ set(weights))[:3]}")
    averaged = {}
    for key in member_weights[0]:
        total = sum(weights[key].float() for weights in member_weights)
        averaged[key] = (total / len(member_weights)).to(member_weights[0][key].dtype)
    return averaged


def read_weights(model_dir: Path) -> dict:
    """Every tensor of the safetensors files (shards included) of a saved model directory."""
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights


def assemble(
    saved_members: Sequence[Path],
    out_dir: Path,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str = DEFAULT_ATTENTION,
) -> Path:
    """Write the ensemble directory at `out_dir` (atomically): the members in members/0..k-1 and their weight
    average beside them, a whole model (however the members trained), with the first member's tokenizer and
    generation config. The members are hard-linked in, so that a failed write leaves them where they were; they
    are removed from there once the ensemble is whole. Rank 0 alone; the members must be whole saved models
    (RMStageConfig checks the method)."""
    from rlhf.adaptation.config import AdaptationConfig

    first = Path(saved_members[0])
    model = load_adapted(
        first, task="reward", trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
    )
    model.load_state_dict(averaged_state_dict([read_weights(Path(member)) for member in saved_members]))
    averaged_dir = out_dir.parent / f".{out_dir.name}.averaged"
    save_adapted(
        model,
        load_tokenizer(str(first), trust_remote_code=trust_remote_code),
        averaged_dir,
        AdaptationConfig(adaptation_method="full"),
    )
    with atomic_directory(out_dir) as staging:
        for item in averaged_dir.iterdir():
            os.replace(item, staging / item.name)
        if (first / GENERATION_CONFIG).is_file():
            shutil.copy2(first / GENERATION_CONFIG, staging / GENERATION_CONFIG)
        for index, member in enumerate(saved_members):
            shutil.copytree(member, staging / MEMBERS_DIR / str(index), copy_function=_link_or_copy)
        write_ensemble_file(staging, len(saved_members))
    shutil.rmtree(averaged_dir, ignore_errors=True)
    for member in saved_members:
        shutil.rmtree(member, ignore_errors=True)
    return out_dir


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link (no second copy of the weights), or a copy where the file system has none."""

    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
