"""A 2-process PPO run (the `deepspeed` launcher, gloo on CPU) with normalize_scores, killed after its first
checkpoint and resumed, reports the same metrics and ends with the same score moments as a run never interrupted:
the moments are those of every rank's scores, so the checkpoint's copy is right for every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.helpers import full_disk_hook
from tests.helpers.ppo_setup import (
    REPO,
    assert_same_metric_rows,
    killed_at_step_2_then_resumed,
    launch_two,
    stage_arguments,
    subprocess_env,
    two_process_command,
)


def final_moments(output_dir) -> dict:
    from rlhf.ppo.checkpoint import TRAINER_STATE, latest_checkpoint

    return json.loads((latest_checkpoint(output_dir) / TRAINER_STATE).read_text())["score_moments"]


COMMON = dict(max_steps=6, save_steps=2, eval_prompts=4, normalize_scores=True, warmup_steps=2)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, models):
    """The models, and the output of an uninterrupted 2-process run of 6 steps."""
    root = tmp_path_factory.mktemp("two_ranks")
    straight = launch_two(stage_arguments(models, root / "straight", root / "reg1", **COMMON), root)
    output = straight.communicate()[0]
    assert straight.returncode == 0, output[-4000:]
    return models, root / "straight"


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_normalises_and_reports_as_an_uninterrupted_one(straight_run, tmp_path):
    from rlhf.ppo.tracking import read_metrics

    models, straight_dir = straight_run
    common = COMMON
    killed_dir = tmp_path / "killed"
    killed_at_step_2_then_resumed(
        lambda argv: launch_two(argv, tmp_path),
        lambda run: os.killpg(run.pid, signal.SIGKILL),  # the launcher and both ranks
        models,
        killed_dir,
        tmp_path / "reg2",
        **common,
    )

    expected, got = read_metrics(straight_dir), read_metrics(killed_dir)
    assert [row["step"] for row in got] == list(range(1, 7))
    assert_same_metric_rows(expected, got)
    moments = final_moments(killed_dir)
    assert moments == pytest.approx(final_moments(straight_dir), rel=1e-9)
    # 6 steps x 8 prompts x 2 ranks: the moments counted every rank's scores.
    assert moments["count"] == 96


@pytest.mark.slow
def test_a_full_disk_on_one_rank_stops_every_rank_in_one_line_and_the_run_resumes(straight_run, tmp_path):
    from rlhf.ppo.tracking import read_metrics

    models, straight_dir = straight_run
    # Rank 1's file of checkpoint step-4 fills the disk while rank 0 is still to write its own.
    env, marker = full_disk_hook.install(
        tmp_path, subprocess_env(tmp_path), inside=".step-4.saving", failing="rng_state_1", watching="rng_state_0"
    )
    run_dir = tmp_path / "full"
    command = two_process_command(
        "--module", "rlhf.stages.ppo", *stage_arguments(models, run_dir, tmp_path / "reg", **COMMON)
    )
    # No timeout: were rank 0 left waiting at a barrier, this would hang, and that is the failure it guards.
    failed = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    assert failed.returncode == 2, failed.stdout[-4000:]
    errors = [line for line in failed.stdout.splitlines() if "error: " in line]
    assert errors and all(
        f"no space left on device writing {run_dir / 'checkpoints' / 'step-4'}" in line for line in errors
    ), errors
    assert f"the last whole checkpoint is {run_dir / 'checkpoints' / 'step-2'}" in errors[0]
    # Rank 0 may still be writing into the staging directory, so the failed rank leaves it for the next run.
    assert not marker.exists()
    staging = run_dir / "checkpoints" / ".step-4.saving"
    assert f"left the partial {staging}, as other ranks may still have been writing into it" in errors[0]
    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert checkpoints == [".step-4.saving", "step-2"], checkpoints  # removed by the resumed run, before it writes

    resumed = launch_two(stage_arguments(models, run_dir, tmp_path / "reg", resume=True, **COMMON), tmp_path)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output[-4000:]
    assert_same_metric_rows(read_metrics(straight_dir), read_metrics(run_dir))
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step-4", "step-6"]
