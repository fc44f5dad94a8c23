"""PPO on 2 processes under the `deepspeed` launcher with ZeRO-3 actor and critic (gloo on CPU).

The same run with the actor's parameters gathered once per rollout and gathered at every generation step must
report the same metrics: generation samples the same tokens, and everything after follows from them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from ppo_setup import PYTHON, REPO, build_models, stage_arguments, subprocess_env

TIMING_KEYS = {"time_generation", "time_scoring", "time_training", "tokens_per_second"}


def deepspeed_launch(argv: list[str], tmp_path, port: int) -> subprocess.CompletedProcess:
    # `python -m deepspeed.launcher.runner` is the `deepspeed` command, found without relying on PATH.
    command = [PYTHON, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port), "--module", "rlhf.stages.ppo", *argv]
    return subprocess.run(command, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=REPO)


@pytest.mark.slow
def test_two_process_zero3_run_and_both_generation_paths_agree(tmp_path):
    from rlhf.ppo.tracking import read_metrics

    models = build_models(tmp_path / "models")
    zero3, inference = (str(REPO / "deepspeed_configs" / name) for name in ("zero3.json", "zero3_inference.json"))
    runs = {}
    for port, path in ((29631, "gather_once"), (29632, "per_step")):
        output_dir = tmp_path / path
        argv = stage_arguments(models, output_dir, tmp_path / f"registry_{path}", max_steps=3, save_steps=3,
                               eval_prompts=4, actor_deepspeed=zero3, critic_deepspeed=zero3,
                               reference_deepspeed=inference, reward_deepspeed=inference, zero3_generation=path)
        result = deepspeed_launch(argv, tmp_path, port)
        assert result.returncode == 0, result.stdout[-4000:]
        runs[path] = read_metrics(output_dir)
        # Each rank wrote its own shards of weights and optimiser states.
        shards = sorted(p.name for p in (output_dir / "checkpoints" / "step-3" / "actor").glob("*optim_states.pt"))
        assert len(shards) == 2, shards
        assert json.loads((output_dir / "registered.json").read_text())["reference"] == "ppo@1"

    assert [row["step"] for row in runs["gather_once"]] == [1, 2, 3]
    for once, per_step in zip(runs["gather_once"], runs["per_step"]):
        for key in set(once) - TIMING_KEYS:
            assert per_step[key] == pytest.approx(once[key], rel=1e-5, abs=1e-6), (once["step"], key)
