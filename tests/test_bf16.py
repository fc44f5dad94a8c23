"""bf16: off on a CPU unless set; a bf16 PPO update computes in bf16 on float32 master weights, and a bf16 run trains
and saves."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.ppo_setup import engines_for, run_in_process, scored_rollout, stage_arguments


def master_weights(engine) -> list[torch.Tensor]:
    """What the optimiser steps: ZeRO-3's flat fp32 partitions (swapped into its param_groups only during a step),
    else the wrapped optimiser's parameters (the bf16 wrapper's fp32 copies)."""
    return list(
        getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
        or [p for group in engine.basic_optimizer.param_groups for p in group["params"]]
    )


def test_bf16_is_off_on_a_cpu_unless_set(models, tmp_path):
    from rlhf.config import parse_config
    from rlhf.ppo.engines import engine_config
    from rlhf.stages.ppo import PPOStageConfig

    for overrides, enabled in (({}, False), ({"bf16": True}, True), ({"bf16": False}, False)):
        config = parse_config(
            PPOStageConfig, stage_arguments(models, tmp_path / "run", tmp_path / "registry", **overrides)
        )
        assert config.bf16 is enabled
        for role in ("actor", "reference"):
            resolved = engine_config(getattr(config, f"{role}_deepspeed"), config, 32, trained=role == "actor")
            assert resolved["bf16"]["enabled"] is enabled and resolved["fp16"]["enabled"] is False


@pytest.mark.parametrize("layout", ["zero0.json", "zero3.json"])
def test_a_bf16_ppo_update_on_a_cpu_computes_in_bf16_on_float32_master_weights(models, tmp_path, layout):
    from rlhf.ppo import update
    from tests.helpers.ppo_setup import REPO

    ds = str(REPO / "deepspeed_configs" / layout)
    _, inputs, engines = engines_for(models, tmp_path, bf16=True, actor_deepspeed=ds, critic_deepspeed=ds)
    # DeepSpeed's bf16 mode: the modules (all four) hold bf16 weights...
    for role in ("actor", "critic", "reference", "reward"):
        module = getattr(engines, role).module
        assert {getattr(p, "ds_tensor", p).dtype for p in module.parameters()} == {torch.bfloat16}, role
    # ...the optimiser steps float32 master copies of the trained ones...
    for role in ("actor", "critic"):
        stepped = master_weights(getattr(engines, role))
        assert stepped and {p.dtype for p in stepped} == {torch.float32}, role
    rollout, sampling = scored_rollout(engines, inputs)
    assert torch.isfinite(rollout.logprobs).all() and torch.isfinite(rollout.values).all()
    # ...and the forward and backward run in bf16.
    logits_dtypes, grad_dtypes = [], []
    engines.actor.module.get_output_embeddings().register_forward_hook(
        lambda module, args, output: logits_dtypes.append(output.dtype)
    )
    weight = engines.actor.module.get_input_embeddings().weight
    weight.register_hook(lambda grad: grad_dtypes.append(grad.dtype))
    master_before = [p.detach().clone() for p in master_weights(engines.actor)]
    stats = update.train_minibatch(
        engines.actor, engines.critic, rollout, update.UpdateSettings(1, 4, 0.2, 0.2, 0.1, 0.0, sampling), None
    )
    assert stats is not None and torch.isfinite(stats.loss)
    assert logits_dtypes == [torch.bfloat16] and grad_dtypes == [torch.bfloat16]
    master_after = [p.detach() for p in master_weights(engines.actor)]
    assert any(not torch.equal(a, b) for a, b in zip(master_before, master_after))  # the step was taken


@pytest.mark.slow
def test_a_bf16_ppo_run_on_a_cpu_trains_and_saves_its_policy(models, tmp_path):
    import json

    from rlhf.ppo.tracking import read_metrics
    from tests.helpers.ppo_setup import saved_weights

    run_in_process(
        stage_arguments(
            models, tmp_path / "run", tmp_path / "registry", bf16=True, max_steps=2, save_steps=0, eval_prompts=2
        )
    )
    rows = read_metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(isinstance(row["policy_loss"], float) and row["policy_loss"] == row["policy_loss"] for row in rows)
    registered = json.loads((tmp_path / "run" / "registered.json").read_text())
    assert registered["reference"] == "ppo@1"
    weights = saved_weights(registered["path"])
    assert weights and {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}  # DeepSpeed's 16-bit weights
