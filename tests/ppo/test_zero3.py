"""PPO on 2 processes under the `deepspeed` launcher with ZeRO-3 actor and critic (gloo on CPU).

The same run with the actor's parameters gathered once per rollout and gathered at every generation step must
report the same metrics: generation samples the same tokens, and everything after follows from them (the per-step
run also checkpoints actor and critic activations, which ZeRO-3 gathers again for the recompute). And the
same run with nothing sharded (ZeRO-0 everywhere) must report the same metrics and save the same final policy:
sharding changes where the numbers live, not what they are. The reward model is an ensemble of two (one engine over
both members, partitioned as they load; the critic starts from their weight average), aggregated by `min`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.ppo_setup import (
    REPO,
    assert_same_final_metrics,
    assert_same_metric_rows,
    build_reward_ensemble,
    deepspeed_launch,
    saved_weights,
    stage_arguments,
)


@pytest.mark.slow
def test_two_process_zero3_run_and_both_generation_paths_agree_and_equal_zero0(tmp_path, models):
    from rlhf.ppo.tracking import read_metrics

    ensemble = build_reward_ensemble(tmp_path, models)
    zero3, inference = (str(REPO / "deepspeed_configs" / name) for name in ("zero3.json", "zero3_inference.json"))
    zero3_layout = dict(
        actor_deepspeed=zero3, critic_deepspeed=zero3, reference_deepspeed=inference, reward_deepspeed=inference
    )
    runs = {}
    for port, path in ((29631, "gather_once"), (29632, "per_step"), (29633, "zero0")):
        output_dir = tmp_path / path
        layout = {} if path == "zero0" else dict(zero3_layout, zero3_generation=path)  # stage_arguments: ZeRO-0
        if path == "per_step":
            layout["gradient_checkpointing"] = True  # recomputed under ZeRO-3's gathers, the same numbers
        argv = stage_arguments(
            models,
            output_dir,
            tmp_path / f"registry_{path}",
            max_steps=3,
            save_steps=3,
            eval_prompts=4,
            reward_model=ensemble,
            critic_model=ensemble,
            reward_aggregation="min",
            **layout,
        )
        leftover = f"deepspeed_allreduce_buffer_*_{port}_*"
        for stale in Path("/dev/shm").glob(leftover):  # an older run's, from before the clean-up
            stale.unlink()
        result = deepspeed_launch(argv, tmp_path, port)
        assert result.returncode == 0, result.stdout[-4000:]
        # DeepSpeed's CPU all-reduce buffers (66 MB of shared memory per rank) do not outlive the run.
        assert not list(Path("/dev/shm").glob(leftover))
        runs[path] = read_metrics(output_dir)
        assert json.loads((output_dir / "registered.json").read_text())["reference"] == "ppo@1"
        if path != "zero0":
            # Each rank wrote its own shards of weights and optimiser states.
            shards = sorted(p.name for p in (output_dir / "checkpoints" / "step-3" / "actor").glob("*optim_states.pt"))
            assert len(shards) == 2, shards

    assert [row["step"] for row in runs["gather_once"]] == [1, 2, 3]
    assert all(row["rm_score_std"] > 0 for row in runs["gather_once"])  # both members scored every response
    for other in ("per_step", "zero0"):
        assert_same_metric_rows(runs["gather_once"], runs[other], other)

    # The final policy, streamed one module at a time under ZeRO-3, equals the one ZeRO-0 saved whole.
    sharded, whole = (saved_weights(tmp_path / path / "final_model") for path in ("gather_once", "zero0"))
    assert sorted(sharded) == sorted(whole)
    for key, tensor in whole.items():
        torch.testing.assert_close(sharded[key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    final = {path: json.loads((tmp_path / path / "metrics.json").read_text()) for path in ("gather_once", "zero0")}
    assert_same_final_metrics(final["zero0"], final["gather_once"])
