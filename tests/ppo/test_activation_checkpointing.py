"""Activation checkpointing in every stage: PPO's actor and critic recompute every layer in the backward and train as
without it (also LoRA under two-process ZeRO-3); the SFT and RM Trainers checkpoint as asked."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.ppo_setup import (
    assert_same_metric_rows,
    engines_for,
    run_in_process,
    scored_rollout,
    stage_arguments,
    two_process_command,
)


def checkpoint_options(model) -> list[dict]:
    """The keyword arguments of every checkpointed layer's checkpoint function (empty: no layer checkpoints)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [
        dict(layer._gradient_checkpointing_func.keywords)
        for layer in model.modules()
        if isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing
    ]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_recomputes_every_layer_of_actor_and_critic_in_the_backward(models, tmp_path, method):
    from rlhf.ppo import activation_checkpointing, update

    forwards, sampled = {}, {}
    for checkpointing in (False, True):
        _, inputs, engines = engines_for(
            models,
            tmp_path,
            gradient_checkpointing=checkpointing,
            adaptation_method=method,
            critic_adaptation_method=method,
            lora_dropout=0.0,
        )
        layers = {
            role: activation_checkpointing.checkpointed_layers(getattr(engines, role).module)
            for role in ("actor", "critic")
        }
        assert all(len(found) == (1 if checkpointing else 0) for found in layers.values())  # the tiny model's layer
        rollout, sampling = scored_rollout(engines, inputs)
        settings = update.UpdateSettings(1, 4, 0.2, 0.2, 0.1, 0.0, sampling)
        # In training mode (disable_dropout: false) a checkpointed layer would drop the KV cache and generation
        # would recompute the whole sequence at every token: generation pauses checkpointing, keeps its cache
        # and samples what it samples without.
        engines.actor.module.train(True)
        attention_calls = []
        first_attention = next(m for m in engines.actor.module.modules() if type(m).__name__.endswith("Attention"))
        handle = first_attention.register_forward_pre_hook(
            lambda module, args, kwargs, calls=attention_calls: calls.append(kwargs.get("past_key_values") is not None),
            with_kwargs=True,
        )
        sampled[checkpointing] = scored_rollout(engines, inputs)[0].response_ids
        handle.remove()
        engines.actor.module.train(False)
        assert len(attention_calls) > 5 and all(attention_calls[:5])  # generation's calls, then scoring's
        # The attention inside each layer runs once in the forward, and once more when the backward recomputes it.
        attention = {"actor": engines.actor.module, "critic": engines.critic.module}
        counts = {role: 0 for role in attention}
        handles = []
        for role, module in attention.items():
            first_layer = next(m for m in module.modules() if type(m).__name__.endswith("DecoderLayer"))

            def count(*_, role=role, counts=counts):
                counts[role] += 1

            handles.append(first_layer.self_attn.register_forward_hook(count))
        trained = {
            name: parameter.detach().clone()
            for name, parameter in engines.actor.module.named_parameters()
            if parameter.requires_grad
        }
        with (
            activation_checkpointing.in_force(engines.actor.module),
            activation_checkpointing.in_force(engines.critic.module),
        ):
            assert update.train_minibatch(engines.actor, engines.critic, rollout, settings, None) is not None
        for handle in handles:
            handle.remove()
        forwards[checkpointing] = counts
        # After the update the layers are back in eval mode: generation and scoring never drop out or checkpoint.
        assert not any(layer.training for found in layers.values() for layer in found)
        changed = [
            name
            for name, before in trained.items()
            if not torch.equal(before, dict(engines.actor.module.named_parameters())[name])
        ]
        assert any("layers.0." in name for name in changed), changed  # gradients reached the first layer
    assert forwards == {False: {"actor": 1, "critic": 1}, True: {"actor": 2, "critic": 2}}
    assert torch.equal(sampled[True], sampled[False])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_ppo_run_with_gradient_checkpointing_reports_the_metrics_of_one_without(models, tmp_path, method):
    from rlhf.ppo.tracking import read_metrics

    common = dict(max_steps=3, save_steps=0, eval_prompts=2, adaptation_method=method, lora_dropout=0.0)
    run_in_process(stage_arguments(models, tmp_path / "plain", tmp_path / "reg1", **common))
    run_in_process(
        stage_arguments(models, tmp_path / "checkpointed", tmp_path / "reg2", gradient_checkpointing=True, **common)
    )
    assert_same_metric_rows(read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "checkpointed"))


@pytest.mark.slow
def test_sft_checkpoints_by_default_and_rm_when_asked_through_the_trainer(models, tmp_path):
    import datasets
    from trl import SFTTrainer

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.config import parse_config
    from rlhf.data.rankings import Ranking
    from rlhf.models import load_tokenizer
    from rlhf.rm.batches import RankingCollator, tokenize_rankings
    from rlhf.rm.config import RMStageConfig
    from rlhf.rm.model import load_reward_model
    from rlhf.rm.trainer import RankingTrainer
    from rlhf.sft.config import SFTStageConfig

    # The Trainer turns checkpointing on in train(): one step each.
    common = [
        "--output_dir",
        str(tmp_path / "out"),
        "--report_to",
        "none",
        "--max_steps",
        "1",
        "--save_strategy",
        "no",
        "--per_device_train_batch_size",
        "1",
    ]
    tokenizer = load_tokenizer(models["policy"])
    records = [{"prompt": "add 1 and 2", "completion": " 3"}]
    for argv, on in ((common, True), (common + ["--gradient_checkpointing", "false"], False)):
        policy = load_adapted(models["policy"], task="causal_lm", is_trainable=True)
        SFTTrainer(
            model=policy,
            args=parse_config(SFTStageConfig, argv),
            processing_class=tokenizer,
            train_dataset=datasets.Dataset.from_list(records),
        ).train()
        # TRL's SFT default: on, non-reentrant (transformers' default since 5.0).
        assert checkpoint_options(policy) == ([{"use_reentrant": False}] if on else []), argv
    rankings = [Ranking("r1", "add 1 and 2", (" 3", " 4"), (1, 2))]
    features = tokenize_rankings(rankings, tokenizer)
    for argv, on in ((common, False), (common + ["--gradient_checkpointing", "true"], True)):
        reward = load_reward_model(models["reward"])[0].requires_grad_(True)  # loaded frozen, for scoring
        RankingTrainer(
            model=reward,
            args=parse_config(RMStageConfig, argv),
            train_dataset=features,
            data_collator=RankingCollator(tokenizer.pad_token_id),
        ).train()
        assert checkpoint_options(reward) == ([{"use_reentrant": False}] if on else []), argv


@pytest.mark.slow
def test_gradient_checkpointing_trains_a_lora_actor_and_critic_under_two_process_zero3(models, tmp_path):
    """PEFT + ZeRO-3 + non-reentrant checkpointing is where TRL forces reentrant checkpointing (trl#6356: frozen
    parameters partitioned again before the recompute, DeepSpeed#4332). With every parameter partitioned (threshold 0)
    the run must train on the versions we pin."""
    import json
    import subprocess

    from rlhf.ppo.tracking import read_metrics
    from tests.helpers.ppo_setup import REPO, saved_weights, subprocess_env

    ds_config = json.loads((REPO / "deepspeed_configs" / "zero3.json").read_text())
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3_all_partitioned.json").write_text(json.dumps(ds_config))
    zero3, inference = (
        str(tmp_path / "zero3_all_partitioned.json"),
        str(REPO / "deepspeed_configs" / "zero3_inference.json"),
    )
    argv = stage_arguments(
        models,
        tmp_path / "run",
        tmp_path / "registry",
        max_steps=2,
        save_steps=0,
        eval_prompts=2,
        gradient_checkpointing=True,
        adaptation_method="lora",
        critic_adaptation_method="lora",
        lora_dropout=0.0,
        actor_deepspeed=zero3,
        critic_deepspeed=zero3,
        reference_deepspeed=inference,
        reward_deepspeed=inference,
    )
    command = two_process_command("--module", "rlhf.stages.ppo", *argv)
    result = subprocess.run(
        command, env=subprocess_env(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]
    rows = read_metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2] and all(row["skipped_updates"] == 0 for row in rows)
    trained = saved_weights(json.loads((tmp_path / "run" / "registered.json").read_text())["path"])
    start = saved_weights(models["policy"])
    assert any(not torch.equal(trained[key], start[key]) for key in start)  # the merged adapter moved the policy
