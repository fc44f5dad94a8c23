"""rlhf/run_lock.py: one run at a time in a run_dir or output_dir, refused in one line naming the holder; a kill -9
of the holder frees the directory."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf.errors import RLHFError
from rlhf.run_lock import holding
from tests.helpers.ppo_setup import subprocess_env

# Takes the lock, says so, and holds it until the test closes its stdin or kills it: no timing involved.
HOLDER = """
import sys
from rlhf.run_lock import holding
with holding(sys.argv[1], "output_dir"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder_of(tmp_path):
    """Start a process that holds a directory's lock; yields a function that starts one on a directory."""
    started = []

    def start(directory: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory)],
            env=subprocess_env(tmp_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout.readline() == "held\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def refusal(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def killed(process: subprocess.Popen) -> None:
    process.kill()  # SIGKILL: no handler, no cleanup runs
    process.wait()


def test_a_second_pipeline_on_a_run_dir_in_use_refuses_and_a_kill_frees_it(holder_of, tmp_path, capsys, monkeypatch):
    from rlhf import pipeline

    run_dir = tmp_path / "run"
    first = holder_of(run_dir)
    message = refusal(capsys, pipeline.main, ["--run_dir", str(run_dir)])
    assert message.startswith(
        f"error: {run_dir} is in use by another run (pid {first.pid} on host {socket.gethostname()}, since "
    )
    assert message.endswith("); wait for it to end, or give this run another run_dir")
    assert [path.name for path in run_dir.iterdir()] == [".run.lock"]  # the second run wrote nothing

    killed(first)
    ran = []
    monkeypatch.setattr(pipeline, "run_stages", lambda config: ran.append(config.run_dir) or 0)
    assert pipeline.main(["--run_dir", str(run_dir)]) == 0 and ran == [str(run_dir)]


def test_a_stage_on_an_output_dir_in_use_refuses_and_a_kill_frees_it(holder_of, tmp_path, capsys):
    from rlhf.stages import sft

    output_dir = tmp_path / "sft"
    argv = [
        "--model_name_or_path",
        str(tmp_path / "no_model"),
        "--train_file",
        str(tmp_path / "demos.jsonl"),
        "--output_dir",
        str(output_dir),
        "--registry_dir",
        str(tmp_path / "registry"),
        "--report_to",
        "none",
    ]
    first = holder_of(output_dir)
    message = refusal(capsys, sft.main, argv)
    assert message.startswith(f"error: {output_dir} is in use by another run (pid {first.pid} on host ")
    assert message.endswith("; wait for it to end, or give this run another output_dir")

    killed(first)
    # The lock is free: the run goes on, to the next thing wrong with it.
    assert "no_model" in refusal(capsys, sft.main, argv)


def test_the_pipeline_and_the_stage_it_starts_hold_different_locks(tmp_path):
    with holding(tmp_path / "run", "run_dir"), holding(tmp_path / "run" / "sft", "output_dir"):
        with pytest.raises(RLHFError, match="is in use by another run"):
            with holding(tmp_path / "run", "run_dir"):
                pass


@pytest.mark.parametrize("rank, refused", [("0", True), ("1", False)])
def test_only_global_rank_0_locks_a_stage_output_dir_for_its_job(rank, refused, holder_of, tmp_path, monkeypatch):
    from rlhf.stages.prologue import output_dir_held

    output_dir = tmp_path / "sft"
    holder_of(output_dir)  # stands for another job, or for rank 0 of this one
    monkeypatch.setenv("RANK", rank)
    if refused:
        with pytest.raises(RLHFError, match="is in use by another run"):
            with output_dir_held(SimpleNamespace(output_dir=str(output_dir))):
                pass
    else:
        with output_dir_held(SimpleNamespace(output_dir=str(output_dir))):
            pass


def test_a_lock_taken_a_moment_ago_names_a_process_just_started(tmp_path):
    from rlhf.run_lock import holder

    (tmp_path / ".run.lock").write_text("")
    assert holder(tmp_path / ".run.lock") == "a process that has just started"
