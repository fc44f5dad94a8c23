"""rlhf.ppo.forward: scoring in micro-batches of forward_batch_size equals scoring the whole batch."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.ppo_setup import assert_same_metric_rows, engines_for, run_in_process, stage_arguments

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` in get_peft_model, and TRL's configs set the
# deprecated `gradient_checkpointing` name; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]


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


def checkpoint_options(model) -> list[dict]:
    """The keyword arguments of every checkpointed layer's checkpoint function (empty: no layer checkpoints)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [
        dict(layer._gradient_checkpointing_func.keywords)
        for layer in model.modules()
        if isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing
    ]


def master_weights(engine) -> list[torch.Tensor]:
    """What the optimiser steps: ZeRO-3's flat fp32 partitions (swapped into its param_groups only during a step),
    else the wrapped optimiser's parameters (the bf16 wrapper's fp32 copies)."""
    return list(
        getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
        or [p for group in engine.basic_optimizer.param_groups for p in group["params"]]
    )
