"""A 2-process PPO run (the `deepspeed` launcher, gloo on CPU) with normalize_scores, killed after its first
checkpoint and resumed, reports the same metrics and ends with the same score moments as a run never interrupted:
the moments are those of every rank's scores, so the checkpoint's copy is right for every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ppo_setup import PYTHON, REPO, assert_same_metric_rows, build_models, stage_arguments, subprocess_env
from rlhf.distributed import free_port



def launch_two(argv: list[str], tmp_path) -> subprocess.Popen:
    # `python -m deepspeed.launcher.runner` is the `deepspeed` command; its own session, so that a kill takes the
    # launcher and both ranks at once, as a node failure would.
    command = [PYTHON, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
               "--module", "rlhf.stages.ppo", *argv]
    return subprocess.Popen(command, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, start_new_session=True)


def final_moments(output_dir) -> dict:
    from rlhf.ppo.checkpoint import TRAINER_STATE, latest_checkpoint

    return json.loads((latest_checkpoint(output_dir) / TRAINER_STATE).read_text())["score_moments"]


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_normalises_and_reports_as_an_uninterrupted_one(tmp_path):
    from rlhf.ppo.tracking import read_metrics

    models = build_models(tmp_path / "models")
    common = dict(max_steps=6, save_steps=2, eval_prompts=4, normalize_scores=True, warmup_steps=2)
    straight = launch_two(stage_arguments(models, tmp_path / "straight", tmp_path / "reg1", **common), tmp_path)
    output = straight.communicate()[0]
    assert straight.returncode == 0, output[-4000:]

    killed_dir = tmp_path / "killed"
    killed = launch_two(stage_arguments(models, killed_dir, tmp_path / "reg2", **common), tmp_path)
    while not (killed_dir / "checkpoints" / "step-2").is_dir():
        assert killed.poll() is None, killed.stdout.read()[-4000:]
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (killed_dir / "registered.json").exists()  # it really died mid-run
    resumed = launch_two(stage_arguments(models, killed_dir, tmp_path / "reg2", resume=True, **common), tmp_path)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output[-4000:]
    assert "resuming from" in output

    expected, got = read_metrics(tmp_path / "straight"), read_metrics(killed_dir)
    assert [row["step"] for row in got] == list(range(1, 7))
    assert_same_metric_rows(expected, got)
    moments = final_moments(killed_dir)
    assert moments == pytest.approx(final_moments(tmp_path / "straight"), rel=1e-9)
    # 6 steps x 8 prompts x 2 ranks: the moments counted every rank's scores.
    assert moments["count"] == 96
