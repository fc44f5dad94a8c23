"""What real runs need to fit (issue 11, item 3): PPO scoring in micro-batches, gradient checkpointing in every
stage, the attention implementation, bf16 and DeepSpeed's own optimisers."""

from __future__ import annotations

import pytest
import torch
from ppo_setup import TIMING_KEYS, assert_same_metric_rows, build_models, engines_for, stage_arguments

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` in get_peft_model, and TRL's configs set the
# deprecated `gradient_checkpointing` name; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return build_models(tmp_path_factory.mktemp("ppo_fitting_models"))


def run_in_process(argv: list[str]):
    from rlhf.config import parse_config
    from rlhf.stages.ppo import PPOStageConfig, run

    return run(parse_config(PPOStageConfig, argv))


def rows_seen_by_each_forward(engines) -> tuple[dict[str, list[int]], list]:
    """Per model, the number of rollouts in every forward it runs (hooks to remove after). A padding-free forward
    (no attention mask) holds one rollout per position 0: these rollouts fit one packed row, with no filler."""
    seen: dict[str, list[int]] = {"actor": [], "reference": [], "critic": [], "reward": []}

    def recorder(name):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            packed = kwargs.get("attention_mask") is None
            seen[name].append(int((kwargs["position_ids"] == 0).sum()) if packed else ids.shape[0])

        return hook

    modules = {
        "actor": engines.actor.module,
        "reference": engines.reference.module,
        "critic": engines.critic.module,
        "reward": engines.reward.module,
    }
    handles = [module.register_forward_pre_hook(recorder(name), with_kwargs=True) for name, module in modules.items()]
    return seen, handles


def test_scoring_in_micro_batches_equals_scoring_the_whole_batch(models, tmp_path):
    from rlhf.ppo import experience
    from rlhf.ppo.logprobs import sampling_settings_for

    _, inputs, engines = engines_for(models, tmp_path)
    sampling = sampling_settings_for(inputs.tokenizer, 0.9, 0, 1.0, 6)
    batch = experience.tokenize_prompts(inputs.tokenizer, inputs.prompts[:7])
    torch.manual_seed(0)
    response_ids = experience.generate(engines.actor, batch, sampling.generation_config(inputs.tokenizer), "auto")
    whole = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64, forward_batch_size=0)
    assert whole.response_mask.sum() > 7  # real responses, not all empty

    for size in (1, 3, 4, 7, 16):  # 3 and 4 leave a ragged last micro-batch of 1 and 3 rows
        seen, handles = rows_seen_by_each_forward(engines)
        parts = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64, forward_batch_size=size)
        for handle in handles:
            handle.remove()
        expected_rows = [min(size, 7 - start) for start in range(0, 7, size)]
        assert seen == {name: expected_rows for name in seen}, size
        for field in ("logprobs", "ref_logprobs", "values", "scores"):
            torch.testing.assert_close(
                getattr(parts, field),
                getattr(whole, field),
                rtol=1e-5,
                atol=1e-5,
                msg=lambda message, size=size, field=field: f"forward_batch_size {size}, {field}: {message}",
            )


def test_forward_batch_size_zero_means_minibatch_size_and_negative_is_refused(models, tmp_path):
    from rlhf.config import parse_config
    from rlhf.errors import ConfigError
    from rlhf.stages.ppo import PPOStageConfig

    def config(**overrides):
        return parse_config(
            PPOStageConfig, stage_arguments(models, tmp_path / "run", tmp_path / "registry", **overrides)
        )

    assert config().scoring_batch_size == 4  # minibatch_size in stage_arguments
    assert config(forward_batch_size=3).scoring_batch_size == 3
    with pytest.raises(ConfigError, match="forward_batch_size must be >= 0"):
        config(forward_batch_size=-1)


@pytest.mark.slow
def test_a_ppo_run_scoring_in_micro_batches_reports_the_metrics_of_one_scoring_whole_batches(models, tmp_path):
    from rlhf.ppo.tracking import read_metrics

    common = dict(max_steps=3, save_steps=0, eval_prompts=2)
    run_in_process(stage_arguments(models, tmp_path / "whole", tmp_path / "reg1", forward_batch_size=8, **common))
    run_in_process(stage_arguments(models, tmp_path / "parts", tmp_path / "reg2", forward_batch_size=3, **common))
    assert_same_metric_rows(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts"))


def scored_rollout(engines, inputs, count: int = 4):
    from rlhf.ppo import experience
    from rlhf.ppo.logprobs import sampling_settings_for

    sampling = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, 5)
    batch = experience.tokenize_prompts(inputs.tokenizer, inputs.prompts[:count])
    torch.manual_seed(0)
    response_ids = experience.generate(engines.actor, batch, sampling.generation_config(inputs.tokenizer), "auto")
    rollout = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64)
    rollout, _ = experience.with_advantages(
        rollout, experience.RewardShaping(kl_coef=0.01), sampling.stop_token_ids, None
    )
    return rollout, sampling


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


def checkpoint_options(model) -> list[dict]:
    """The keyword arguments of every checkpointed layer's checkpoint function (empty: no layer checkpoints)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [
        dict(layer._gradient_checkpointing_func.keywords)
        for layer in model.modules()
        if isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing
    ]


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
        policy = load_adapted(models["policy"], task="causal_lm")
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


def test_every_loading_path_runs_the_attention_asked_for(models, tmp_path):
    from rlhf import _compat
    from rlhf.adaptation.apply import apply_adaptation
    from rlhf.adaptation.checkpoint import load_adapted, save_adapted
    from rlhf.adaptation.config import AdaptationConfig
    from rlhf.models import load_tokenizer
    from rlhf.rm.model import load_reward_model

    tokenizer = load_tokenizer(models["policy"])
    saved = {}
    for method, extra in (("lora", dict(merge_lora_on_save=False)), ("adapter", dict(adapter_bottleneck=4))):
        adaptation = AdaptationConfig(adaptation_method=method, **extra)
        model = apply_adaptation(load_adapted(models["policy"], task="causal_lm"), adaptation, task="causal_lm")
        save_adapted(model, tokenizer, tmp_path / method, adaptation)
        saved[method] = str(tmp_path / method)
    for attention in ("eager", "sdpa"):
        loaded = [
            load_adapted(models["policy"], task="causal_lm", attn_implementation=attention),
            load_reward_model(models["reward"], attn_implementation=attention)[0],
            *(load_adapted(path, task="causal_lm", attn_implementation=attention) for path in saved.values()),
        ]
        assert [_compat.attention_implementation(model.config) for model in loaded] == [attention] * 4
    # sdpa unless asked otherwise, as transformers picks where a model supports it.
    assert _compat.attention_implementation(load_adapted(saved["lora"], task="causal_lm").config) == "sdpa"


def test_the_ppo_stage_runs_all_four_models_with_the_configured_attention(models, tmp_path):
    from rlhf import _compat

    _, _, engines = engines_for(models, tmp_path, attn_implementation="eager")
    inner = [engines.actor.module, engines.critic.module.model, engines.reference.module, engines.reward.module]
    assert [_compat.attention_implementation(model.config) for model in inner] == ["eager"] * 4


def test_the_sft_and_rm_stages_load_with_the_configured_attention(models, tmp_path):
    from types import SimpleNamespace

    from rlhf import _compat
    from rlhf.config import parse_config
    from rlhf.models import load_tokenizer
    from rlhf.rm.config import RMStageConfig
    from rlhf.sft.config import SFTStageConfig
    from rlhf.stages.prologue import load_trainable

    inputs = SimpleNamespace(model_path=models["policy"], tokenizer=load_tokenizer(models["policy"]))
    for config_class, task in ((SFTStageConfig, "causal_lm"), (RMStageConfig, "reward")):
        config = parse_config(
            config_class,
            ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--attn_implementation", "eager"],
        )
        assert _compat.attention_implementation(load_trainable(inputs, config, task).config) == "eager"


@pytest.mark.parametrize("attention", ["flash_attention_2", "flash_attention_3"])
def test_a_flash_attention_that_is_not_installed_is_one_line_before_any_work(models, tmp_path, attention):
    from transformers import utils

    from rlhf.attention import FLASH_ATTENTION
    from rlhf.config import parse_config
    from rlhf.errors import ConfigError
    from rlhf.rm.config import RMStageConfig
    from rlhf.sft.config import SFTStageConfig
    from rlhf.stages.ppo import PPOStageConfig

    assert not getattr(utils, FLASH_ATTENTION[attention])()  # this machine has no flash-attn
    ppo = stage_arguments(models, tmp_path / "run", tmp_path / "registry", attn_implementation=attention)
    sft = ["--output_dir", str(tmp_path / "out"), "--attn_implementation", attention]
    for config_class, argv in ((PPOStageConfig, ppo), (SFTStageConfig, sft), (RMStageConfig, sft)):
        with pytest.raises(ConfigError) as error:
            parse_config(config_class, argv)
        assert str(error.value) == (
            f"attn_implementation '{attention}' needs the flash-attn package, which is not "
            "installed here (pip install flash-attn on a CUDA machine); use 'sdpa'"
        )


def test_an_attention_the_model_does_not_implement_is_one_line(models):
    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="attn_implementation 'bogus'") as error:
        load_adapted(models["policy"], task="causal_lm", attn_implementation="bogus")
    assert "\n" not in str(error.value)


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


def master_weights(engine) -> list[torch.Tensor]:
    """What the optimiser steps: ZeRO-3's flat fp32 partitions (swapped into its param_groups only during a step),
    else the wrapped optimiser's parameters (the bf16 wrapper's fp32 copies)."""
    return list(
        getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
        or [p for group in engine.basic_optimizer.param_groups for p in group["params"]]
    )


@pytest.mark.parametrize("layout", ["zero0.json", "zero3.json"])
def test_a_bf16_ppo_update_on_a_cpu_computes_in_bf16_on_float32_master_weights(models, tmp_path, layout):
    from ppo_setup import REPO

    from rlhf.ppo import update

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

    from ppo_setup import saved_weights

    from rlhf.ppo.tracking import read_metrics

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


@pytest.mark.parametrize("cuda", [False, True])
def test_deepspeeds_own_adam_where_it_applies_torchs_otherwise(cuda):
    import json

    from ppo_setup import REPO

    from rlhf.ppo.optimizers import choose_optimizer

    files = {path.name: json.loads(path.read_text()) for path in (REPO / "deepspeed_configs").glob("*.json")}
    chosen = {name: choose_optimizer(ds_config, cuda) for name, ds_config in files.items()}
    on_device = "fused_adam" if cuda else "torch_adamw"
    assert chosen == {name: "cpu_adam" if name == "zero3_offload.json" else on_device for name in files}
    for device, expected in (("cpu", "cpu_adam"), ("nvme", "cpu_adam"), ("none", on_device)):
        ds_config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": device}}}
        assert choose_optimizer(ds_config, cuda) == expected, device
    assert choose_optimizer({}, cuda) == on_device


def test_a_fusedadam_that_deepspeed_cannot_build_falls_back_to_torchs_fused_adamw(monkeypatch, capsys):
    """On an H200 whose TORCH_CUDA_ARCH_LIST was "9.0a", DeepSpeed 0.19.8's JIT build of FusedAdam raised
    ValueError (it parses each architecture as numbers) and stopped every ZeRO-0/ZeRO-3 PPO run at engine build.
    The same failure, raised where FusedAdam builds its op, now gives torch's fused AdamW and one line."""
    import deepspeed.ops.adam

    from rlhf.ppo.optimizers import build_optimizer

    def unbuildable(*args, **kwargs):
        raise ValueError("invalid literal for int() with base 10: '0a'")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(deepspeed.ops.adam, "FusedAdam", unbuildable)
    parameter = torch.nn.Parameter(torch.ones(4))
    optimizer = build_optimizer([parameter], {"zero_optimization": {"stage": 3}}, 1e-2, 0.0)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"]
    assert optimizer.defaults["eps"] == 1e-5 and optimizer.defaults["lr"] == 1e-2
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [
        "DeepSpeed's FusedAdam could not be built (ValueError: invalid literal for int() with base 10: "
        "'0a'); using torch's fused AdamW"
    ]


def test_torchs_adamw_is_the_fused_kernel_and_steps_as_the_for_loop_one():
    from rlhf.ppo.optimizers import ADAM_EPS, build_optimizer, can_fuse

    torch.manual_seed(0)
    start, grads = torch.randn(1000), [torch.randn(1000) for _ in range(3)]
    stepped = []
    for make in (
        lambda p: build_optimizer(p, {}, 1e-2, 0.01),
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=ADAM_EPS, weight_decay=0.01, foreach=False),
    ):
        parameter = torch.nn.Parameter(start.clone())
        optimizer = make([parameter])
        for grad in grads:
            parameter.grad = grad.clone()
            optimizer.step()
        stepped.append(parameter.detach())
    assert optimizer.defaults["fused"] is None and build_optimizer([parameter], {}, 1e-2, 0.0).defaults["fused"]
    assert not torch.equal(stepped[0], start)
    torch.testing.assert_close(stepped[0], stepped[1], rtol=1e-6, atol=1e-7)
    assert not can_fuse(torch.zeros(2, dtype=torch.int64)) and not can_fuse(torch.zeros(2, device="meta"))


@pytest.mark.slow
def test_optimiser_offload_steps_with_deepspeeds_cpu_adam_the_same_adamw_as_torchs(models, tmp_path):
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from ppo_setup import REPO

    from rlhf.ppo.tracking import read_metrics

    zero3, offload = (str(REPO / "deepspeed_configs" / name) for name in ("zero3.json", "zero3_offload.json"))
    _, _, engines = engines_for(models, tmp_path / "engines", actor_deepspeed=offload, critic_deepspeed=offload)
    assert all(isinstance(engine.basic_optimizer, DeepSpeedCPUAdam) for engine in (engines.actor, engines.critic))
    # DeepSpeed refuses torch's AdamW with offload (zero_force_ds_cpu_optimizer); the CPU one is the same AdamW.
    common = dict(max_steps=3, save_steps=0, eval_prompts=2, weight_decay=0.01)
    run_in_process(
        stage_arguments(
            models, tmp_path / "torch", tmp_path / "reg1", actor_deepspeed=zero3, critic_deepspeed=zero3, **common
        )
    )
    run_in_process(
        stage_arguments(
            models,
            tmp_path / "cpu_adam",
            tmp_path / "reg2",
            actor_deepspeed=offload,
            critic_deepspeed=offload,
            **common,
        )
    )
    # The actor's numbers agree exactly; the critic's (large values, learning rate 5e-3) carry the two
    # implementations' float rounding: a few parts in a million per step.
    torch_rows, cpu_adam_rows = read_metrics(tmp_path / "torch"), read_metrics(tmp_path / "cpu_adam")
    assert [row["step"] for row in cpu_adam_rows] == [1, 2, 3]
    for want, have in zip(torch_rows, cpu_adam_rows):
        for key in set(want) - TIMING_KEYS:
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (want["step"], key)

    # One step from the same weights and gradients: the same AdamW update.
    torch.manual_seed(0)
    start, grads = torch.randn(1000), [torch.randn(1000) for _ in range(3)]
    stepped = []
    for make in (
        lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-5, weight_decay=0.01),
        lambda p: DeepSpeedCPUAdam(p, lr=1e-2, eps=1e-5, weight_decay=0.01, adamw_mode=True),
    ):
        parameter = torch.nn.Parameter(start.clone())
        optimizer = make([parameter])
        for grad in grads:
            parameter.grad = grad.clone()
            optimizer.step()
        stepped.append(parameter.detach())
    assert not torch.equal(stepped[0], start)
    torch.testing.assert_close(stepped[1], stepped[0], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_gradient_checkpointing_trains_a_lora_actor_and_critic_under_two_process_zero3(models, tmp_path):
    """PEFT + ZeRO-3 + non-reentrant checkpointing is where TRL forces reentrant checkpointing (trl#6356: frozen
    parameters partitioned again before the recompute, DeepSpeed#4332). With every parameter partitioned (threshold 0)
    the run must train on the versions we pin."""
    import json
    import subprocess

    from ppo_setup import PYTHON, REPO, saved_weights, subprocess_env

    from rlhf.distributed import free_port
    from rlhf.ppo.tracking import read_metrics

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
    command = [
        PYTHON,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "rlhf.stages.ppo",
        *argv,
    ]
    result = subprocess.run(
        command, env=subprocess_env(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]
    rows = read_metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2] and all(row["skipped_updates"] == 0 for row in rows)
    trained = saved_weights(json.loads((tmp_path / "run" / "registered.json").read_text())["path"])
    start = saved_weights(models["policy"])
    assert any(not torch.equal(trained[key], start[key]) for key in start)  # the merged adapter moved the policy
