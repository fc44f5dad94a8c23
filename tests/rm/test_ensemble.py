"""rlhf/rm/ensemble.py and an ensemble's scoring and measures: the weight average and the spread by hand, the
directory as one registry entry, and k members scoring as k separate reward models do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlhf.rm.ensemble import ENSEMBLE_FILE, RewardEnsemble, averaged_state_dict, is_ensemble, member_dirs, members_of
from rlhf.rm.evaluation import ensemble_spread, mean_rows, pearson
from tests.helpers.ppo_setup import build_reward_ensemble

OFFSETS = (0.5, -0.25)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, models) -> dict:
    return {
        **models,
        "ensemble": build_reward_ensemble(tmp_path_factory.mktemp("rm_ensemble"), models, offsets=OFFSETS),
    }


def test_the_weight_average_by_hand():
    first = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0], dtype=torch.bfloat16)}
    second = {"w": torch.tensor([3.0, -2.0]), "b": torch.tensor([1.0], dtype=torch.bfloat16)}
    averaged = averaged_state_dict([first, second])
    torch.testing.assert_close(averaged["w"], torch.tensor([2.0, 0.0]))
    assert averaged["b"].dtype == torch.bfloat16 and averaged["b"].item() == 0.5
    with pytest.raises(ValueError, match="different weights"):
        averaged_state_dict([first, {"w": first["w"]}])


def test_the_members_spread_by_hand():
    # Two members, one ranking of two completions: member 0 scores 1, 3; member 1 scores 3, 3.
    by_member = [[[1.0, 3.0]], [[3.0, 3.0]]]
    assert mean_rows(by_member) == [[2.0, 3.0]]
    # Population std per completion: |1 - 3| / 2 = 1 and 0, mean 0.5; the means 2 and 3 spread by 0.5.
    assert ensemble_spread(by_member) == {"ensemble_std": 0.5, "ensemble_relative_std": 1.0}
    assert mean_rows([[[1.0, 3.0]]]) == [[1.0, 3.0]]  # one member: its own rows
    assert pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [1.0, 0.0, 1.0]) == pytest.approx(0.0)


def test_the_directory_holds_the_members_and_their_weight_average(ensemble):
    from rlhf.rm.ensemble import read_weights

    path = Path(ensemble["ensemble"])
    assert is_ensemble(path) and not is_ensemble(ensemble["reward"])
    assert json.loads((path / ENSEMBLE_FILE).read_text())["members"] == 2
    members = member_dirs(path)
    assert members == [path / "members" / "0", path / "members" / "1"]
    assert member_dirs(ensemble["reward"]) == [Path(ensemble["reward"])]
    weights = [read_weights(member) for member in members]
    torch.testing.assert_close(
        read_weights(path)["score.weight"], (weights[0]["score.weight"] + weights[1]["score.weight"]) / 2
    )
    # What a reader that knows nothing of ensembles needs is at the top: a whole model and its tokenizer.
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    # The members were hard-linked in, and the places they were saved to are gone.
    assert not any(p.name.startswith("reward-member-") for p in path.parent.iterdir())


def test_k_members_score_as_k_separate_reward_models_and_the_ensemble_as_their_mean(ensemble):
    from rlhf.rm.model import load_reward_model, score_texts, score_texts_by_member, single_reward_model

    model, tokenizer, normalization = load_reward_model(ensemble["ensemble"])
    assert isinstance(model, RewardEnsemble) and len(members_of(model)) == 2
    assert normalization.offsets == OFFSETS  # each member's own
    prompts = ["sort these words : cat dog answer :"] * 2 + ["reverse these words : owl fox bear answer :"]
    completions = ["cat dog", "dog cat", "bear fox owl"]
    together = score_texts_by_member(model, tokenizer, prompts, completions, normalization=normalization, max_length=64)
    for member_dir, scores in zip(member_dirs(ensemble["ensemble"]), together):
        alone, alone_tokenizer, alone_normalization = single_reward_model(str(member_dir))
        assert scores == pytest.approx(
            score_texts(alone, alone_tokenizer, prompts, completions, normalization=alone_normalization, max_length=64),
            abs=1e-5,
        )
    mean = score_texts(model, tokenizer, prompts, completions, normalization=normalization, max_length=64)
    assert mean == pytest.approx([(a + b) / 2 for a, b in zip(*together)], abs=1e-6)
    # The members scored apart: a member's scores are not the other's.
    assert max(abs(a - b) for a, b in zip(*together)) > 1e-3


def test_the_ensemble_is_one_registry_entry_that_loads_whole(ensemble, tmp_path):
    from rlhf.registry import Registry, resolve_model
    from rlhf.rm.model import load_reward_model

    registry = Registry(tmp_path / "registry")
    copy = shutil.copytree(ensemble["ensemble"], tmp_path / "rm_final")  # registering moves the directory
    entry = registry.register("rm", "rm", copy, base_model="tiny", metrics={"ensemble_size": 2})
    path, found = resolve_model("rm", registry)
    assert found.reference == entry.reference == "rm@1" and len(registry.entries()) == 1
    model, _, normalization = load_reward_model(path)
    assert len(members_of(model)) == 2 and normalization.offsets == OFFSETS
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
