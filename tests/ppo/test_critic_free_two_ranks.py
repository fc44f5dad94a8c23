"""Critic-free PPO on 2 processes with a ZeRO-3 actor (the `deepspeed` launcher, gloo on CPU): rloo and grpo run with
groups of 4 responses per prompt, and a run resumed from its step-1 checkpoint reports the same metrics and saves
the same policy as the run that went on uninterrupted."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhf.ppo.checkpoint import checkpoints_dir
from rlhf.run_files import PPO_METRICS
from tests.helpers.ppo_setup import (
    REPO,
    assert_same_final_metrics,
    assert_same_metric_rows,
    launch_two,
    saved_weights,
    stage_arguments,
)


def run_two(models: dict, output_dir, registry, **settings) -> str:
    run = launch_two(stage_arguments(models, output_dir, registry, **settings), output_dir.parent)
    output = run.communicate()[0]
    assert run.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_two_process_run_with_a_zero3_actor_resumes_as_if_uninterrupted(models, tmp_path, estimator):
    from rlhf.ppo.tracking import read_metrics

    # The actor under ZeRO-3, whose shards the checkpoint holds; the frozen models stay whole (ZeRO-3 of all four
    # is tests/ppo/test_zero3.py's), which keeps these launches short. 2 prompts x 4 samples per rank; every
    # checkpoint kept, so that step 1's can start the second run. No held-out comparison at the end: the saved
    # policies are compared instead.
    settings = dict(
        advantage_estimator=estimator,
        samples_per_prompt=4,
        rollout_batch_size=8,
        minibatch_size=4,
        max_steps=2,
        save_steps=1,
        save_total_limit=0,
        eval_prompts_file="",
        actor_deepspeed=str(REPO / "deepspeed_configs" / "zero3.json"),
    )
    straight = tmp_path / "straight"
    output = run_two(models, straight, tmp_path / "reg1", **settings)
    assert f"no critic ({estimator})" in output
    shards = sorted(p.name for p in (checkpoints_dir(straight) / "step-2" / "actor").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # each rank its own ZeRO-3 shards
    assert not (checkpoints_dir(straight) / "step-2" / "critic").exists()

    # The second run starts where the first stood after step 1: its checkpoint and its metrics so far.
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoints_dir(straight) / "step-1", checkpoints_dir(resumed) / "step-1")
    (resumed / PPO_METRICS).write_text((straight / PPO_METRICS).read_text().splitlines(keepends=True)[0])
    output = run_two(models, resumed, tmp_path / "reg2", resume=True, **settings)
    assert "resuming from" in output and "(step 1)" in output

    expected, got = read_metrics(straight), read_metrics(resumed)
    assert [row["step"] for row in got] == [1, 2]
    assert not {"value_loss", "value_explained_variance"} & set(got[-1])
    assert_same_metric_rows(expected, got)
    final = {path: json.loads((path / "metrics.json").read_text()) for path in (straight, resumed)}
    assert_same_final_metrics(final[straight], final[resumed])
    assert final[resumed]["advantage_estimator"] == estimator
    ours, theirs = (saved_weights(path / "final_model") for path in (resumed, straight))
    for key, tensor in theirs.items():
        torch.testing.assert_close(ours[key], tensor, rtol=1e-5, atol=1e-6, msg=key)
