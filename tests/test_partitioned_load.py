"""Under ZeRO-3 a checkpoint loads module by module (rlhf.partitioned_load): the model equals transformers' own
ZeRO-3 load and the checkpoint, for several families, as a causal LM and as a reward model, from sharded
checkpoints too, while rank 0 never holds the whole checkpoint.

The key mapping is tested here directly; the loads run on 2 processes in tests/helpers/partitioned_load_probe.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.partitioned_load import AmbiguousCheckpoint, checkpoint_sources, model_key_for
from tests.helpers.architectures import build_family_model
from tests.helpers.ppo_setup import reports_of_two_ranks, saved_weights

REWARD_BODY = {"model.embed_tokens.weight", "model.norm.weight", "score.weight"}


def test_a_checkpoint_key_fills_the_same_key_or_the_key_with_the_base_prefix_added_or_removed():
    assert model_key_for("model.norm.weight", REWARD_BODY, "model") == "model.norm.weight"
    assert model_key_for("norm.weight", REWARD_BODY, "model") == "model.norm.weight"  # a base-model checkpoint
    assert model_key_for("model.norm.weight", {"norm.weight"}, "model") == "norm.weight"  # into a base model
    assert model_key_for("lm_head.weight", REWARD_BODY, "model") is None  # a causal LM's head under a reward model
    assert model_key_for("modelx.norm.weight", {"x.norm.weight"}, "model") is None  # a prefix is a whole name
    assert model_key_for("norm.weight", {"model.norm.weight"}, "") is None


def test_checkpoint_sources_map_the_body_and_leave_out_keys_the_model_has_no_place_for():
    causal_lm_checkpoint = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    assert checkpoint_sources(causal_lm_checkpoint, REWARD_BODY, "model") == {
        "model.embed_tokens.weight": "model.embed_tokens.weight",
        "model.norm.weight": "model.norm.weight",
    }
    assert checkpoint_sources(["embed_tokens.weight"], REWARD_BODY, "model") == {
        "model.embed_tokens.weight": "embed_tokens.weight"
    }
    assert checkpoint_sources([], REWARD_BODY, "model") == {}
    with pytest.raises(AmbiguousCheckpoint, match="norm.weight"):
        checkpoint_sources(["norm.weight", "model.norm.weight"], REWARD_BODY, "model")


def resaved(source, out_dir, dtype=None, **save_options):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(source, dtype=dtype).save_pretrained(out_dir, **save_options)
    return out_dir


def build_mixtral(out_dir):
    """A transformers 5 MoE checkpoint: per-expert weights that loading fuses (a weight conversion)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=2,
        num_experts_per_tok=1,
    )
    MixtralForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def build_large_llama(out_dir):
    """About 70 MB of float32 weights: large enough for a load's memory to be measured above the noise."""
    from transformers import LlamaForCausalLM

    from rlhf.demo.tiny_model import tiny_llama_config

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(1000, hidden_size=512, num_layers=4, num_heads=8)).save_pretrained(out_dir)
    return out_dir


def plain_checkpoint(path):
    """Weights of tests/helpers/partitioned_load_probe.py's WithBuffer: a persistent buffer, one weight for two
    modules."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    save_file(
        {
            "body.weight": torch.randn(3, 4, generator=generator),
            "body.bias": torch.randn(3, generator=generator),
            "scale": torch.randn(3, generator=generator),
        },
        str(path),
    )
    return path


def checkpoint_mb(directory) -> float:
    return sum(file.stat().st_size for file in directory.glob("*.safetensors")) / 2**20


@pytest.mark.slow
def test_zero3_loads_stream_module_by_module_and_equal_transformers_own_load(tmp_path):
    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tiny_model, build_tiny_reward_model

    words = corpus_words()
    families = {
        family: str(build_family_model(tmp_path / family, family, words)) for family in ("llama3", "gpt2", "opt")
    }
    demo = build_tiny_model(tmp_path / "demo", words)  # Llama with tied embeddings
    reward = build_tiny_reward_model(tmp_path / "reward", demo)
    sharded = resaved(demo, tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    large = build_large_llama(tmp_path / "large")
    cases = {
        f"{family}_{task}": {"path": path, "task": task}
        for family, path in families.items()
        for task in ("causal_lm", "reward")
    }
    cases.update(
        {
            "sharded_causal_lm": {"path": str(sharded), "task": "causal_lm"},
            "sharded_reward": {"path": str(sharded), "task": "reward"},
            "reward_checkpoint_as_reward": {"path": str(reward), "task": "reward"},
            "reward_checkpoint_as_causal_lm": {"path": str(reward), "task": "causal_lm"},
            "bfloat16_checkpoint": {
                "path": str(resaved(demo, tmp_path / "bf16", dtype=torch.bfloat16)),
                "task": "causal_lm",
            },
            # A float32 checkpoint under the stage's bf16 (DeepSpeed's bf16 mode: zero.Init builds bf16 parameters).
            "llama3_as_bfloat16": {"path": families["llama3"], "task": "causal_lm", "bf16": True},
            "mixtral_converted_weights": {"path": str(build_mixtral(tmp_path / "mixtral")), "task": "causal_lm"},
            "large": {"path": str(large), "task": "causal_lm", "memory_only": True},
        }
    )
    plain_module = {"path": str(plain_checkpoint(tmp_path / "plain.safetensors"))}
    (tmp_path / "cases.json").write_text(json.dumps({**cases, "plain_module": plain_module}))
    reports, output = reports_of_two_ranks(
        "partitioned_load_probe.py", tmp_path / "cases.json", tmp_path / "out", tmp_path
    )

    plain = [report.pop("plain_module") for report in reports]
    assert (
        plain[0]
        == plain[1]
        == {"missing": ["extra.bias", "extra.weight", "head.weight"], "errors": [], "marked": 3, "shared": True}
    )
    loaded, checkpoint = (
        saved_weights_file(path) for path in (tmp_path / "out" / "plain.safetensors", tmp_path / "plain.safetensors")
    )
    for key, tensor in checkpoint.items():
        assert torch.equal(loaded[key], tensor), key

    # Only the checkpoint whose keys need transformers' conversions takes transformers' path, and says why.
    for report in reports:
        for name, record in report.items():
            assert record["streamed"]["streamed"] == (name != "mixtral_converted_weights"), name
            assert not record["transformers"]["streamed"], name
            assert record["streamed"]["tied"] == record["transformers"]["tied"], name
            assert record["streamed"]["dtype"] == record["transformers"]["dtype"], name
    assert output.count("through transformers' ZeRO-3 path") == 1
    assert "its keys need transformers' weight conversions" in output
    assert reports[0]["gpt2_causal_lm"]["streamed"]["tied"] and reports[0]["sharded_causal_lm"]["streamed"]["tied"]
    assert reports[0]["llama3_as_bfloat16"]["streamed"]["dtype"] == "torch.bfloat16"

    for name, case in cases.items():
        if case.get("memory_only"):
            continue
        streamed = saved_weights_file(tmp_path / "out" / name / "streamed.safetensors")
        expected = saved_weights_file(tmp_path / "out" / name / "transformers.safetensors")
        assert sorted(streamed) == sorted(expected), name
        for key, tensor in expected.items():
            assert streamed[key].dtype == tensor.dtype and torch.equal(streamed[key], tensor), (name, key)
        if name == "mixtral_converted_weights":
            continue  # its checkpoint holds the experts one by one; the model, fused
        # ...and both are the checkpoint, wherever the checkpoint has the weight.
        checkpoint = saved_weights(case["path"])
        shared = set(checkpoint) & set(streamed)
        assert len(shared) >= len(streamed) - 2, name  # at most a new head (and its tied twin) is not in it
        for key in shared:
            assert torch.equal(streamed[key], checkpoint[key].to(streamed[key].dtype)), (name, key)
    # A new reward head was initialised (as transformers does), not left empty.
    new_head = saved_weights_file(tmp_path / "out" / "llama3_reward" / "streamed.safetensors")["score.weight"]
    assert new_head.abs().sum() > 0

    # Memory: the streamed load costs rank 0 its partition plus one module; transformers' reads the whole checkpoint.
    size = checkpoint_mb(large)
    rank0_streamed = reports[0]["large"]["streamed"]["peak_increase_mb"]
    rank0_transformers = reports[0]["large"]["transformers"]["peak_increase_mb"]
    assert rank0_streamed < 0.75 * size, (rank0_streamed, rank0_transformers, size)
    assert rank0_transformers > rank0_streamed + 0.5 * size, (rank0_streamed, rank0_transformers, size)


def saved_weights_file(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
