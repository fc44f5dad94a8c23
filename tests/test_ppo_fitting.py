"""What real PPO runs need to fit (issue 11, item 3): scoring in micro-batches, gradient checkpointing, the
attention implementation, bf16 and DeepSpeed's own optimisers."""

from __future__ import annotations

import pytest
import torch

from ppo_setup import assert_same_metric_rows, build_models, stage_arguments


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return build_models(tmp_path_factory.mktemp("ppo_fitting_models"))


def engines_for(models, tmp_path, **overrides):
    from rlhf.config import parse_config
    from rlhf.ppo import inputs as ppo_inputs
    from rlhf.ppo.engines import build_engines, init_distributed
    from rlhf.stages.ppo import PPOStageConfig

    init_distributed()
    config = parse_config(PPOStageConfig, stage_arguments(models, tmp_path / "run", tmp_path / "registry",
                                                          **overrides))
    inputs = ppo_inputs.read_inputs(config)
    return config, inputs, build_engines(config, inputs.paths, inputs.tokenizer)


def run_in_process(argv: list[str]):
    from rlhf.config import parse_config
    from rlhf.stages.ppo import PPOStageConfig, run

    return run(parse_config(PPOStageConfig, argv))


def rows_seen_by_each_forward(engines) -> tuple[dict[str, list[int]], list]:
    """Per model, the number of rows of every forward it runs (hooks to remove after)."""
    seen: dict[str, list[int]] = {"actor": [], "reference": [], "critic": [], "reward": []}

    def recorder(name):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            seen[name].append(ids.shape[0])
        return hook

    modules = {"actor": engines.actor.module, "reference": engines.reference.module,
               "critic": engines.critic.module, "reward": engines.reward.module}
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
        parts = experience.score(engines, batch, response_ids, inputs.tokenizer, sampling, 64,
                                 forward_batch_size=size)
        for handle in handles:
            handle.remove()
        expected_rows = [min(size, 7 - start) for start in range(0, 7, size)]
        assert seen == {name: expected_rows for name in seen}, size
        for field in ("logprobs", "ref_logprobs", "values", "scores"):
            torch.testing.assert_close(getattr(parts, field), getattr(whole, field), rtol=1e-5, atol=1e-5,
                                       msg=lambda message: f"forward_batch_size {size}, {field}: {message}")


def test_forward_batch_size_zero_means_minibatch_size_and_negative_is_refused(models, tmp_path):
    from rlhf.config import parse_config
    from rlhf.errors import ConfigError
    from rlhf.stages.ppo import PPOStageConfig

    def config(**overrides):
        return parse_config(PPOStageConfig, stage_arguments(models, tmp_path / "run", tmp_path / "registry",
                                                            **overrides))

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
