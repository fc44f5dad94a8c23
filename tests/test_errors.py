"""rlhf/errors.py: how a command that stops says so: one line on stderr, never a traceback."""

from __future__ import annotations

import importlib

import pytest

from rlhf.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, RLHFError, exits_cleanly


def stopped_by_ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "module, stops, argv, says",
    [
        (
            "rlhf.stages.sft",
            "run",
            ["--output_dir", "{tmp}/sft", "--train_file", "{tmp}/demos.jsonl"],
            "the stage stopped; run the same command with --resume true to continue from its last checkpoint",
        ),
        (
            "rlhf.stages.ppo",
            "run",
            ["--output_dir", "{tmp}/ppo", "--prompts_file", "{tmp}/prompts.jsonl"],
            "the stage stopped; run the same command with --resume true to continue from its last checkpoint",
        ),
        (
            "rlhf.pipeline",
            "run",
            ["--run_dir", "{tmp}/run"],
            "the pipeline stopped; run the same command to resume (finished stages are skipped",
        ),
        (
            "rlhf.labels.cli",
            "import_rankings",
            ["import", "--format", "jsonl", "{tmp}/in.jsonl", "-o", "{tmp}/out.jsonl"],
            "stopped before it finished; run the same command again",
        ),
        ("rlhf.report", "write_report", ["{tmp}/run"], "stopped before it finished; run the same command again"),
    ],
)
def test_ctrl_c_is_one_line_saying_what_stopped_and_how_to_go_on(
    module, stops, argv, says, tmp_path, monkeypatch, capsys
):
    entry_point = importlib.import_module(module)
    monkeypatch.setattr(entry_point, stops, stopped_by_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        entry_point.main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit_info.value.code == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"interrupted: {says}") and "Traceback" not in err, err


def test_a_user_error_is_one_line_with_exit_code_2(capsys):
    @exits_cleanly
    def main():
        raise RLHFError("bad\nthing")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: bad thing\n"
