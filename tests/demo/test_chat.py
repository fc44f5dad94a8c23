"""The second worked example, run as a user runs their own data: `python -m rlhf.demo.chat` writes a stand-in for
the user's model (a Llama with its own BPE tokenizer and chat template) and data (HH-RLHF-style pairs with long
dialogues, empty and identical replies, a user speaking twice; chat demonstrations; chat prompts), then the
pipeline imports the labels and runs SFT, the reward model and PPO, and writes the report, with no gold scorer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.registry import Registry
from tests.helpers import REPO


def overlong_rows(stage_dir: Path) -> list[dict]:
    path = stage_dir / "overlong.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """The example's files at a quarter of their size, then the pipeline of configs/chat/ with short stages."""
    root = tmp_path_factory.mktemp("chat")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    subprocess.run(
        [sys.executable, "-m", "rlhf.demo.chat", "--out", str(root / "chat"), "--scale", "0.25"],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    data = root / "chat" / "data"
    overrides = {
        "sft_overrides": {
            "model_name_or_path": str(root / "chat" / "base_model"),
            "train_file": str(data / "sft.jsonl"),
            "max_steps": 4,
            "save_strategy": "no",
            "report_to": "none",
        },
        "rm_overrides": {"max_steps": 4, "eval_strategy": "no", "save_strategy": "no", "report_to": "none"},
        "ppo_overrides": {
            "prompts_file": str(data / "prompts_train.jsonl"),
            "eval_prompts_file": str(data / "prompts_eval.jsonl"),
            "eval_prompts": 4,
            "eval_samples_per_prompt": 1,
            "max_steps": 2,
            "save_steps": 1,
            "rollout_batch_size": 4,
            "minibatch_size": 4,
            "ppo_epochs": 1,
            "max_new_tokens": 8,
            "report_to": ["none"],
        },
    }
    argv = [
        sys.executable,
        "-m",
        "rlhf.pipeline",
        "--config",
        "configs/chat/pipeline.yaml",
        "--run_dir",
        str(root / "run"),
        "--labels_file",
        str(data / "preferences.jsonl"),
    ]
    for key, value in overrides.items():
        argv += [f"--{key}", json.dumps(value)]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    return root, result


@pytest.mark.slow
def test_a_users_chat_preferences_go_through_every_stage_to_the_report(chat_run):
    root, result = chat_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = root / "run"
    assert (run / "report" / "report.md").is_file()
    registry = Registry(run / "registry")
    assert registry.get("rm").parents == ["sft@1"]
    assert registry.get("ppo").parents == ["sft@1", "rm@1"]
    # The import left out the broken rows with their reasons, and merged the user who spoke twice.
    labels_log = (run / "logs" / "labels.log").read_text()
    for said in (
        "the chosen (preferred) reply is empty",
        "the rejected reply is empty",
        "chosen and rejected are identical",
        "turns of one role in a row, merged into one turn",
    ):
        assert said in labels_log
    # No warning a user cannot act on.
    assert "FutureWarning" not in result.stdout + result.stderr
    assert "LOAD REPORT" not in result.stdout + result.stderr


@pytest.mark.slow
def test_each_stage_says_what_it_left_out_for_being_over_max_length(chat_run):
    root, result = chat_run
    run = root / "run"
    for stage, name in (("sft", "train"), ("rm", "train"), ("ppo", "prompts")):
        entry = Registry(run / "registry").get(stage)
        dropped = entry.metrics[f"{name}_overlong_dropped"]
        assert dropped > 0 and entry.metrics[f"{name}_overlong_over"] == dropped  # overlong: drop
        assert 0.04 < dropped / entry.metrics[f"{name}_overlong_total"] < 0.25  # the long tail, not the bulk
        assert sum(row["action"] == "dropped" for row in overlong_rows(run / stage)) >= dropped  # ids listed
        assert f"{dropped} of {entry.metrics[f'{name}_overlong_total']}" in entry.metrics["overlong"]
        for line in entry.metrics["overlong"].split("; "):
            assert result.stdout.splitlines().count(line) == 1  # said once, on a line of its own, as it happened
    report = (run / "report" / "report.md").read_text()
    assert report.count("Over-long data:") == 3
    assert "gold scorer" not in report and "| user: " in report  # chat prompts, no gold column filled
