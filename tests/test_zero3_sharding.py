"""ZeRO-3 really shards: on 2 processes no rank holds a whole PPO model, from loading on, and a model saved one
module at a time (what every stage's final save does under ZeRO-3) equals the same model gathered and saved whole.

tests/helpers/zero3_probe.py runs on both ranks and writes what it measured; this file checks it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.ppo_setup import reports_of_two_ranks, saved_weights

MAX_SHARE = 0.55  # half of each model, plus padding and ZeRO-3's persistent small parameters


def houlsby_reward_model(reward_dir: str, out_dir) -> str:
    from rlhf.adaptation.apply import apply_adaptation
    from rlhf.adaptation.checkpoint import load_adapted, save_adapted
    from rlhf.adaptation.config import AdaptationConfig
    from rlhf.models import load_tokenizer

    adaptation = AdaptationConfig(adaptation_method="adapter", adapter_bottleneck=4)
    model = apply_adaptation(load_adapted(reward_dir, task="reward"), adaptation, task="reward")
    save_adapted(model, load_tokenizer(reward_dir), out_dir, adaptation)
    return str(out_dir)


@pytest.mark.slow
def test_no_rank_holds_a_whole_model_and_streamed_saves_equal_whole_ones(tmp_path, models):
    from rlhf.adaptation.checkpoint import load_adapted

    models = {**models, "houlsby_reward": houlsby_reward_model(models["reward"], tmp_path / "houlsby_reward")}
    (tmp_path / "models.json").write_text(json.dumps(models))
    reports, _ = reports_of_two_ranks("zero3_probe.py", tmp_path / "models.json", tmp_path / "out", tmp_path)
    for report in reports:
        # The LoRA actor is its own reference: three engines.
        assert sorted(report["full"]["built"]) == ["actor", "critic", "reference", "reward"]
        assert sorted(report["lora"]["built"]) == ["actor", "critic", "reward"]
        for setup in report.values():
            for role, share in setup["built"].items():
                assert share["share"] <= MAX_SHARE, (role, share)
            # Partitioned already when from_pretrained returned: the base weights never existed whole here.
            for role, share in setup["as_loaded"].items():
                assert share["total"] > 0 and share["share"] <= MAX_SHARE, (role, share)
    # Between them the ranks hold every element.
    for setup in ("full", "lora"):
        for role in reports[0][setup]["built"]:
            assert sum(r[setup]["built"][role]["held"] for r in reports) >= reports[0][setup]["built"][role]["total"]

    out = tmp_path / "out"
    for setup, role in (("full", "actor"), ("lora", "actor"), ("lora", "reward")):
        streamed, whole = out / setup / f"{role}_streamed", out / setup / f"{role}_whole"
        # 20 kB shards: several files and an index, as save_pretrained writes a large model.
        assert len(list(streamed.glob("model-*-of-*.safetensors"))) > 1
        assert (streamed / "model.safetensors.index.json").is_file()
        streamed_weights, whole_weights = saved_weights(streamed), saved_weights(whole)
        assert sorted(streamed_weights) == sorted(whole_weights), (setup, role)
        for key, tensor in whole_weights.items():
            assert torch.equal(streamed_weights[key], tensor), (setup, role, key)
        # ...and it loads back as the same model.
        task = "reward" if role == "reward" else "causal_lm"
        loaded, reference = load_adapted(streamed, task=task), load_adapted(whole, task=task)
        for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items()):
            assert torch.equal(a, b), (setup, role, name)
    # The random weights were really written (not the initial ones).
    lora_policy = saved_weights(out / "lora" / "actor_streamed")
    initial = saved_weights(Path(models["policy"]))
    assert any(not torch.equal(lora_policy[key], initial[key]) for key in initial)


def test_shard_writer_streams_safetensors_that_safetensors_reads_back(tmp_path):
    """The writer puts each tensor's bytes on disk as it is added; the files it closes are safetensors files
    (read by safetensors itself) with every dtype the models save, empty tensors, and a tensor larger than a shard."""
    from safetensors import safe_open

    from rlhf.adaptation.partitioned_save import SAFE_WEIGHTS_INDEX, ShardWriter

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "embed.weight": torch.randn(3, 5, generator=generator),
        "layer.bf16": torch.randn(7, generator=generator).bfloat16(),
        "layer.half": torch.randn(2, 2, generator=generator).half(),
        "mask": torch.tensor([True, False, True]),
        "positions": torch.arange(4),
        "empty": torch.zeros(0),
        "big": torch.randn(100, 10, generator=generator),
    }
    writer = ShardWriter(tmp_path, max_bytes=200)
    for key, tensor in tensors.items():
        writer.add(key, tensor)
    writer.finish()
    index = json.loads((tmp_path / SAFE_WEIGHTS_INDEX).read_text())
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        {*index["weight_map"].values(), SAFE_WEIGHTS_INDEX}
    )
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert len(set(index["weight_map"].values())) == 2  # "big" (4000 bytes) has a file of its own
    for key, tensor in tensors.items():
        with safe_open(str(tmp_path / index["weight_map"][key]), framework="pt") as file:
            read = file.get_tensor(key)
            assert file.metadata() == {"format": "pt"}
        assert read.dtype == tensor.dtype and torch.equal(read, tensor), key
