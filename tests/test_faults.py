"""Faults a cluster deals out, injected deterministically by file surgery, hooks and signals: a kill during a
checkpoint write (the files it leaves), a torn metrics line, a damaged checkpoint or registry entry, a pickle that
runs code, a full disk, SIGTERM. Each run then resumes to the result of an uninterrupted one, or stops with one
line and exit code 2."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf.demo.task import corpus_words, make_split
from rlhf.demo.tiny_model import build_tiny_model
from rlhf.registry import Registry
from tests.helpers.ppo_setup import stage_arguments

TIMING_KEYS = {"time_generation", "time_scoring", "time_training", "tokens_per_second"}


class RunsCode:
    """What an attacker saves in place of a state file: unpickling it creates `marker` (any call would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # Progress bars of what ran before may precede it; the error is the last line, and the only one.
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err[-2000:]
    return errors[0]


# -- torn JSON Lines ---------------------------------------------------------------------------------------
def test_a_torn_last_metrics_line_is_left_out_and_a_bad_middle_line_is_an_error(tmp_path):
    from rlhf.errors import DataError
    from rlhf.run_files import read_jsonl

    path = tmp_path / "ppo_metrics.jsonl"
    path.write_text('{"step": 1, "kl": 0.5}\n{"step": 2, "kl": 0.25}\n{"step": 3, "rm_sc')
    assert read_jsonl(path) == [{"step": 1, "kl": 0.5}, {"step": 2, "kl": 0.25}]
    path.write_text('{"step": 1}\n{"step": 2, "rm_sc\n{"step": 3}\n')
    with pytest.raises(DataError, match="ppo_metrics.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)


def test_the_report_skips_a_torn_last_metrics_line(tmp_path, capsys):
    from rlhf.report import main

    rows = [
        {"step": step, "rm_score": 0.1 * step, "kl": 0.01 * step, "beta": 0.1, "response_length": 4.0}
        for step in (1, 2, 3)
    ]
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "ppo_metrics.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows) + '{"step": 4, "rm_sc'
    )
    main([str(tmp_path), "--registry_dir", str(tmp_path / "registry")])
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "report" / "ppo_training.png").stat().st_size > 0


# -- registry ----------------------------------------------------------------------------------------------
def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_a_damaged_registry_entry_is_reported_and_left_out_by_list_show_and_register(tmp_path, capsys):
    from rlhf.registry import main

    registry = Registry(tmp_path / "registry")
    for number in (1, 2):
        registry.register("sft", "sft", _model_dir(tmp_path / f"model{number}"))
    damaged = tmp_path / "registry" / "entries" / "sft" / "2.json"
    cut_in_half(damaged)

    main(["--registry_dir", str(tmp_path / "registry"), "list"])
    captured = capsys.readouterr()
    assert "sft@1" in captured.out and "sft@2" not in captured.out
    assert f"registry entry {damaged} is damaged and left out" in captured.err

    main(["--registry_dir", str(tmp_path / "registry"), "show", "sft"])
    assert '"version": 1' in capsys.readouterr().out  # the latest whole version

    with pytest.raises(SystemExit) as exit_info:
        main(["--registry_dir", str(tmp_path / "registry"), "show", "sft@2"])
    assert exit_info.value.code == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert str(damaged) in warning and error.startswith("error: ") and "no version 2 of 'sft'" in error

    # A new registration takes a fresh number: the damaged entry's model is not overwritten.
    entry = Registry(tmp_path / "registry").register("sft", "sft", _model_dir(tmp_path / "model3"))
    assert entry.version == 3 and (tmp_path / "registry" / "models" / "sft" / "2").is_dir()


@pytest.mark.parametrize("stage", ["sft", "rm"])
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be >= 1, got 0"),
        (["--per_device_train_batch_size", "-3"], "per_device_train_batch_size must be >= 1, got -3"),
        (["--save_steps", "-1"], "save_steps must be > 0"),
        (["--register_as", "../x"], "register_as: registry name '../x'"),
        (["--learning_rate", "nan"], "learning_rate must be a finite number, got nan"),
        (["--learning_rate", "-1"], "learning_rate must be >= 0, got -1.0"),
        (["--num_train_epochs", "nan"], "num_train_epochs must be a finite number, got nan"),
        (["--num_train_epochs", "0"], "num_train_epochs must be > 0 (or max_steps set), got 0.0"),
        (["--adam_beta2", "1"], "adam_beta2 must be at least 0 and below 1, got 1.0"),
    ],
)
def test_a_bad_config_value_is_one_line_before_any_model_loads(stage, flags, named, tmp_path, capsys):
    from rlhf.stages import rm, sft

    # The model path does not exist: an error about it would mean the value was checked too late.
    argv = [
        "--model_name_or_path",
        str(tmp_path / "no_model"),
        "--output_dir",
        str(tmp_path / "run"),
        "--train_file",
        str(tmp_path / "none.jsonl"),
        "--report_to",
        "none",
        *flags,
    ]
    message = one_line_error(capsys, {"sft": sft.main, "rm": rm.main}[stage], argv)
    assert named in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "umask, file_mode, directory_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)]
)
def test_registry_files_take_the_users_umask(tmp_path, umask, file_mode, directory_mode):
    import os

    previous = os.umask(umask)
    try:
        entry = Registry(tmp_path / "registry").register("sft", "sft", _model_dir(tmp_path / "model"))
    finally:
        os.umask(previous)
    entry_files = [path for path in (tmp_path / "registry").rglob("*.json") if path.is_file()]
    assert entry_files and all(path.stat().st_mode & 0o777 == file_mode for path in entry_files)
    assert Path(entry.path).stat().st_mode & 0o777 == directory_mode


# -- SFT and RM: a kill during a checkpoint write, a damaged or malicious checkpoint -------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from rlhf.data.rankings import Ranking, write_rankings

    root = tmp_path_factory.mktemp("faults")
    build_tiny_model(root / "base", corpus_words(), hidden_size=32, num_layers=2)
    records = make_split(96, seed=1)
    (root / "demos.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (root / "demos_eval.jsonl").write_text("".join(json.dumps(record) + "\n" for record in make_split(8, seed=2)))
    rankings = [
        Ranking(f"r{i}", r["prompt"], (r["completion"], " cat", " dog dog"), (1, 2, 3)) for i, r in enumerate(records)
    ]
    write_rankings(root / "rankings.jsonl", rankings)
    return root


def trainer_stage_args(stage: str, root: Path, out: Path, *extra: str) -> list[str]:
    """4 steps, checkpoints at 2 and 4, held-out data; logged every 3 steps, so that a run resumed at step 2 must
    know the loss of steps it did not log itself."""
    common = [
        "--model_name_or_path",
        str(root / "base"),
        "--registry_dir",
        str(out / "registry"),
        "--output_dir",
        str(out / "run"),
        "--max_length",
        "48",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "constant",
        "--max_steps",
        "4",
        "--logging_steps",
        "3",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--report_to",
        "none",
        "--seed",
        "0",
    ]
    if stage == "sft":
        common += ["--train_file", str(root / "demos.jsonl"), "--eval_file", str(root / "demos_eval.jsonl")]
    else:
        common += [
            "--train_file",
            str(root / "rankings.jsonl"),
            "--normalization_file",
            str(root / "demos.jsonl"),
            "--eval_fraction",
            "0.1",
        ]
    return common + list(extra)


def stage_main(stage: str):
    from rlhf.stages import rm, sft

    return {"sft": sft.main, "rm": rm.main}[stage]


def registered_weights(registry: Path, reference: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(Registry(registry).get(reference).path) / "model.safetensors"))


@pytest.fixture(scope="module", params=["sft", "rm"])
def finished_trainer_run(request, workspace, tmp_path_factory):
    """An uninterrupted run of 4 steps with checkpoints at 2 and 4, registered as <stage>@1."""
    out = tmp_path_factory.mktemp(f"{request.param}_straight")
    stage_main(request.param)(trainer_stage_args(request.param, workspace, out))
    return request.param, out


def as_if_killed(finished: Path, copy: Path) -> Path:
    """A copy of a finished run's directory and registry as a kill before its end would have left them."""
    shutil.copytree(finished, copy)
    for name in ("registered.json", "metrics.json"):
        (copy / "run" / name).unlink()
    return copy


@pytest.mark.slow
def test_trainer_stage_resumes_from_the_newest_whole_checkpoint_after_a_kill_mid_write(
    finished_trainer_run, workspace, tmp_path, capsys
):
    stage, straight = finished_trainer_run
    out = as_if_killed(straight, tmp_path / "killed")
    torn = out / "run" / "checkpoint-4"
    (torn / "trainer_state.json").unlink()  # the Trainer writes it last: a kill mid-save leaves none
    cut_in_half(torn / "model.safetensors")

    stage_main(stage)(trainer_stage_args(stage, workspace, out, "--resume", "true"))
    output = capsys.readouterr().out
    assert f"skipping damaged checkpoint(s) ({torn / 'trainer_state.json'}: missing)" in output
    assert f"resuming from {out / 'run' / 'checkpoint-2'}" in output
    assert json.loads((out / "run" / "registered.json").read_text())["reference"] == f"{stage}@2"
    want, got = registered_weights(out / "registry", f"{stage}@1"), registered_weights(out / "registry", f"{stage}@2")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    # Its train_loss is the whole run's, steps 1-2 before the kill included, not steps 3-4 alone; its log has the
    # uninterrupted run's rows, without a second evaluation "before training".
    registry = Registry(out / "registry")
    straight_loss = registry.get(f"{stage}@1").metrics["train_loss"]
    assert registry.get(f"{stage}@2").metrics["train_loss"] == pytest.approx(straight_loss, rel=1e-6)
    want_rows, got_rows = logged_rows(straight), logged_rows(out)
    assert [sorted(row) for row in got_rows] == [sorted(row) for row in want_rows]
    for have, expected in zip(got_rows, want_rows):
        assert have == pytest.approx(expected, rel=1e-6), expected["step"]


def logged_rows(out: Path) -> list[dict]:
    """A Trainer stage's log_history.jsonl without its timings."""
    rows = [json.loads(line) for line in (out / "run" / "log_history.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if not key.endswith(("_runtime", "_per_second"))} for row in rows]


def test_the_train_loss_of_a_resumed_run_weights_each_logged_interval_by_its_steps():
    from rlhf.stages.trainer_run import whole_run_loss

    # Logged every 2 steps: steps 1-2 averaged 3.0, steps 3-4 averaged 2.0; resumed at step 4, steps 5-7 average 1.0.
    history = [
        {"step": 2, "loss": 3.0},
        {"step": 2, "eval_loss": 9.0},
        {"step": 4, "loss": 2.0},
        {"step": 6, "loss": 1.5},
    ]  # step 6 is the resumed part's own log
    assert whole_run_loss(history, 4, 1.0, 7) == pytest.approx((3.0 * 2 + 2.0 * 2 + 1.0 * 3) / 7)
    assert whole_run_loss([], 0, 1.25, 5) == 1.25


@pytest.mark.slow
def test_trainer_stage_steps_over_a_truncated_file_in_a_finished_checkpoint(
    finished_trainer_run, workspace, tmp_path, capsys
):
    stage, straight = finished_trainer_run
    out = as_if_killed(straight, tmp_path / "damaged")
    cut_in_half(out / "run" / "checkpoint-4" / "optimizer.pt")  # a full disk, or a copy cut short

    stage_main(stage)(trainer_stage_args(stage, workspace, out, "--resume", "true"))
    output = capsys.readouterr().out
    assert f"{out / 'run' / 'checkpoint-4' / 'optimizer.pt'}: cut short" in output
    want, got = registered_weights(out / "registry", f"{stage}@1"), registered_weights(out / "registry", f"{stage}@2")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_trainer_checkpoint_that_pickles_code_is_refused_without_running_it(
    finished_trainer_run, workspace, tmp_path, capsys
):
    stage, straight = finished_trainer_run
    out = as_if_killed(straight, tmp_path / "tampered")
    marker = tmp_path / "payload_ran"
    target = out / "run" / "checkpoint-4" / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [], "extra": RunsCode(marker)}, target)

    message = one_line_error(capsys, stage_main(stage), trainer_stage_args(stage, workspace, out, "--resume", "true"))
    assert str(target) in message and "refusing to load" in message and "io.open" in message
    assert not marker.exists()


@pytest.mark.slow
def test_trainer_stage_saves_a_checkpoint_on_sigterm_exits_0_and_resumes_to_the_uninterrupted_result(
    finished_trainer_run, workspace, tmp_path, capsys
):
    stage, straight = finished_trainer_run
    out, ready, log = tmp_path / "stopped", tmp_path / "at_step_2", tmp_path / "stage.log"
    # No scheduled checkpoint before the end: the one found afterwards is the SIGTERM's.
    args = trainer_stage_args(stage, workspace, out, "--save_steps", "100")
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parent / "helpers" / "pause_at_step.py"),
                stage,
                "2",
                str(ready),
                *args,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        while not ready.exists() and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait() == 0, log.read_text()[-3000:]
    assert f"SIGTERM: saved {out / 'run' / 'checkpoint-2'}; resume with --resume" in log.read_text()
    assert sorted(path.name for path in (out / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "run" / "registered.json").exists() and not (out / "registry" / "models").exists()

    stage_main(stage)(args + ["--resume", "true"])
    assert json.loads((out / "run" / "registered.json").read_text())["reference"] == f"{stage}@1"
    want, got = (
        registered_weights(straight / "registry", f"{stage}@1"),
        registered_weights(out / "registry", f"{stage}@1"),
    )
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ctrl_c_stops_a_trainer_stage_in_one_line_with_exit_130_and_the_rerun_resumes(workspace, tmp_path):
    stage = "sft"  # the RM ends through the same entry point and the same train() call
    out, ready, log = tmp_path / "interrupted", tmp_path / "at_step_3", tmp_path / "stage.log"
    args = trainer_stage_args(stage, workspace, out)
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parent / "helpers" / "pause_at_step.py"),
                stage,
                "3",
                str(ready),
                *args,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        while not ready.exists() and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert process.wait() == 130, log.read_text()[-3000:]
    output = log.read_text()
    assert output.strip().splitlines()[-1] == (
        "interrupted: the stage stopped; run the same command with --resume true to continue from its last "
        "checkpoint (SIGTERM instead saves one before stopping)"
    )
    assert "Traceback" not in output and not (out / "registry" / "entries").exists()

    assert sorted(path.name for path in (out / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    stage_main(stage)(args + ["--resume", "true"])  # from checkpoint-2, saved before the Ctrl-C at step 3
    assert json.loads((out / "run" / "registered.json").read_text())["reference"] == f"{stage}@1"


# -- PPO -----------------------------------------------------------------------------------------------------
def ppo_args(models: dict, out: Path, **overrides) -> list[str]:
    return stage_arguments(
        models, out / "run", out / "registry", max_steps=4, save_steps=2, eval_prompts=4, **overrides
    )


@pytest.fixture(scope="module")
def finished_ppo_run(models, tmp_path_factory) -> Path:
    from rlhf.stages.ppo import main

    out = tmp_path_factory.mktemp("ppo_straight")
    main(ppo_args(models, out))
    return out


def ppo_rows(out: Path) -> list[dict]:
    from rlhf.ppo.tracking import read_metrics

    return read_metrics(out / "run")


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [row["step"] for row in got] == [row["step"] for row in want]
    for have, expected in zip(got, want):
        for key in set(expected) - TIMING_KEYS:
            assert have[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), (expected["step"], key)


@pytest.mark.slow
def test_ppo_resumes_past_a_torn_metrics_line(finished_ppo_run, models, tmp_path, capsys):
    from rlhf.stages.ppo import main

    out = as_if_killed(finished_ppo_run, tmp_path / "killed")
    # Killed while appending step 4's row, after checkpoint 2: the row is half there, checkpoint 4 never was.
    shutil.rmtree(out / "run" / "checkpoints" / "step-4")
    metrics_file = out / "run" / "ppo_metrics.jsonl"
    lines = metrics_file.read_text().splitlines()
    metrics_file.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])

    main(ppo_args(models, out, resume=True))
    assert "resuming from" in capsys.readouterr().out
    assert_same_rows(ppo_rows(out), ppo_rows(finished_ppo_run))
    assert Registry(out / "registry").get("ppo").version == 2


@pytest.mark.parametrize(
    "damaged",
    ["actor/mp_rank_00_model_states.pt", "critic/mp_rank_00_model_states.pt", "rng_state_0.pt", "trainer_state.json"],
)
@pytest.mark.slow
def test_ppo_falls_back_from_a_damaged_latest_checkpoint_saying_which_file(
    finished_ppo_run, models, tmp_path, capsys, damaged
):
    from rlhf.stages.ppo import main

    out = as_if_killed(finished_ppo_run, tmp_path / "damaged")
    checkpoints = out / "run" / "checkpoints"
    cut_in_half(checkpoints / "step-4" / damaged)

    main(ppo_args(models, out, resume=True))
    output = capsys.readouterr().out
    assert f"skipping damaged checkpoint(s) ({checkpoints / 'step-4' / damaged}:" in output
    assert f"resuming from {checkpoints / 'step-2'}" in output
    assert_same_rows(ppo_rows(out), ppo_rows(finished_ppo_run))


@pytest.mark.slow
def test_a_ppo_checkpoint_that_pickles_code_is_refused_without_running_it(finished_ppo_run, models, tmp_path, capsys):
    from rlhf.stages.ppo import main

    out = as_if_killed(finished_ppo_run, tmp_path / "tampered")
    marker = tmp_path / "payload_ran"
    target = out / "run" / "checkpoints" / "step-4" / "actor" / "mp_rank_00_model_states.pt"
    state = torch.load(target, weights_only=True)
    state["payload"] = RunsCode(marker)
    torch.save(state, target)

    message = one_line_error(capsys, main, ppo_args(models, out, resume=True))
    assert str(target) in message and "refusing to load" in message
    assert not marker.exists()


def test_deepspeeds_own_checkpoint_load_is_weights_only_inside_weights_only_loading(tmp_path):
    """The second line of defence, for a file that reaches DeepSpeed without the check: its loader passes
    weights_only=False, and weights_only_loading overrides that."""
    import pickle

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from rlhf.checkpoint_files import weights_only_loading

    marker = tmp_path / "payload_ran"
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "payload": RunsCode(marker)}, path)
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError, match="Unsupported global: GLOBAL io.open"):
        TorchCheckpointEngine().load(str(path))
    assert not marker.exists()
    # DeepSpeed's ZeRO states still load: the types they hold are allowed.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients}, path)
    with weights_only_loading():
        loaded = TorchCheckpointEngine().load(str(path))
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and loaded["loss_scaler"].cur_scale == 1.0


# -- A full disk -----------------------------------------------------------------------------------------------
def disk_full_at(monkeypatch, fragment: str, error: Exception) -> None:
    """torch.save fills the disk on the file whose path contains `fragment`: half a file written, then `error`."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if fragment in str(f):
            Path(f).write_bytes(b"PK\x03\x04 half a file")
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow
def test_a_full_disk_during_a_trainer_checkpoint_is_one_line_cleans_up_and_resumes(
    finished_trainer_run, workspace, tmp_path, capsys, monkeypatch
):
    import errno
    import os

    stage, straight = finished_trainer_run
    out = tmp_path / "full"
    disk_full_at(monkeypatch, "checkpoint-4/optimizer.pt", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    message = one_line_error(capsys, stage_main(stage), trainer_stage_args(stage, workspace, out))
    assert f"no space left on device writing {out / 'run' / 'checkpoint-4'}" in message
    assert f"the last whole checkpoint is {out / 'run' / 'checkpoint-2'}" in message
    assert not (out / "run" / "checkpoint-4").exists() and not (out / "registry" / "entries").exists()

    monkeypatch.undo()
    stage_main(stage)(trainer_stage_args(stage, workspace, out, "--resume", "true"))
    want, got = (
        registered_weights(straight / "registry", f"{stage}@1"),
        registered_weights(out / "registry", f"{stage}@1"),
    )
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_full_disk_during_a_ppo_checkpoint_is_one_line_leaves_no_staging_and_resumes(
    finished_ppo_run, models, tmp_path, capsys, monkeypatch
):
    from rlhf.stages.ppo import main

    out = tmp_path / "full"
    # What torch.save's zip writer raises when the disk fills.
    disk_full_at(
        monkeypatch,
        "step-4.saving/critic",
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3145728 vs 3145664"),
    )
    message = one_line_error(capsys, main, ppo_args(models, out))
    checkpoints = out / "run" / "checkpoints"
    assert f"no space left on device writing {checkpoints / 'step-4'}" in message
    assert f"the last whole checkpoint is {checkpoints / 'step-2'}" in message
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step-2"]  # no staging directory left behind

    monkeypatch.undo()
    main(ppo_args(models, out, resume=True))
    assert_same_rows(ppo_rows(out), ppo_rows(finished_ppo_run))


class FillsTheDisk:
    """An engine whose checkpoint write runs out of space part way, as DeepSpeed's torch.save does on a full disk."""

    def __init__(self, error: BaseException):
        self.error = error

    def save_checkpoint(self, save_dir, tag, save_latest):
        (Path(save_dir) / tag).mkdir()
        (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 partial")
        raise self.error


class Saves:
    def save_checkpoint(self, save_dir, tag, save_latest):
        (Path(save_dir) / tag).mkdir()


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 3 vs 11"),
    ],
)
def test_a_ppo_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path, error):
    from rlhf.errors import RLHFError
    from rlhf.ppo import checkpoint

    checkpoint.save_checkpoint(tmp_path, 2, Saves(), Saves(), {"step": 2}, keep=0)
    with pytest.raises(RLHFError) as raised:
        checkpoint.save_checkpoint(tmp_path, 4, Saves(), FillsTheDisk(error), {"step": 4}, keep=0)
    directory = checkpoint.checkpoints_dir(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"no space left on device writing {directory / 'step-4'}")
    assert f"the last whole checkpoint is {directory / 'step-2'}" in message and "\n" not in message
    assert sorted(path.name for path in directory.iterdir()) == ["step-2"]


def disk_full_writing(monkeypatch, name: str) -> None:
    """An atomic write of the file `name` finds the disk full when it flushes (os.fsync), its data half there."""
    import errno
    import os

    real_fsync = os.fsync

    def fsync(descriptor):
        if Path(os.readlink(f"/proc/self/fd/{descriptor}")).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)


def safetensors_fills_the_disk(monkeypatch) -> None:
    """The final model's weights run out of space half-way, as the SafetensorError of a full disk says."""
    from safetensors import SafetensorError
    from transformers import modeling_utils

    real_save_file = modeling_utils.safe_save_file

    def save_file(tensors, filename, metadata=None):
        if ".final_model." not in str(filename):  # the staging directory of final_model (checkpoints save too)
            return real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"half a file")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)


@pytest.mark.parametrize(
    "written, fill",
    [
        ("run/final_model", safetensors_fills_the_disk),
        ("run/metrics.json", lambda monkeypatch: disk_full_writing(monkeypatch, "metrics.json")),
        ("registry/entries/sft/1.json", lambda monkeypatch: disk_full_writing(monkeypatch, "1.json")),
    ],
)
@pytest.mark.slow
def test_a_full_disk_after_training_is_one_line_leaves_nothing_half_written_and_the_rerun_registers(
    written, fill, workspace, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "full"
    fill(monkeypatch)
    message = one_line_error(capsys, stage_main("sft"), trainer_stage_args("sft", workspace, out))
    assert message.startswith(f"error: no space left on device writing {out / written} (")
    assert not list(out.rglob("*.tmp")) and not (out / "run" / "registered.json").exists()
    assert not Registry(out / "registry").entries()

    monkeypatch.undo()
    stage_main("sft")(trainer_stage_args("sft", workspace, out, "--resume", "true"))
    assert json.loads((out / "run" / "registered.json").read_text())["reference"] == "sft@1"


def test_a_full_disk_writing_the_report_is_one_line(tmp_path, capsys, monkeypatch):
    from rlhf.report import main

    disk_full_writing(monkeypatch, "report.md")
    message = one_line_error(capsys, main, [str(tmp_path), "--registry_dir", str(tmp_path / "registry")])
    assert message.startswith(f"error: no space left on device writing {tmp_path / 'report' / 'report.md'} (")
    assert not list(tmp_path.rglob("*.tmp"))


class FullDiskFile:
    """An open file on a full disk: a write of `refused` text fails with ENOSPC."""

    def __init__(self, file, refused: str):
        self.file, self.refused = file, refused

    def write(self, text: str) -> int:
        import errno
        import os

        if self.refused in text:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.file.close()

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_appending_ppo_metrics_is_one_line(tmp_path, monkeypatch):
    from rlhf.errors import RLHFError
    from rlhf.ppo import tracking

    logger = tracking.MetricsLogger(tmp_path, ["none"], total_steps=2, start_step=0, show_progress=False)
    logger.log({"step": 1, "kl": 0.5})
    monkeypatch.setattr(tracking, "open", lambda *a, **k: FullDiskFile(open(*a, **k), '"step": 2'), raising=False)
    with pytest.raises(RLHFError) as raised:
        logger.log({"step": 2, "kl": 0.25})
    assert str(raised.value).startswith(f"no space left on device writing {tmp_path / 'ppo_metrics.jsonl'} (")
    assert tracking.read_metrics(tmp_path) == [{"step": 1, "kl": 0.5}]


def test_a_full_disk_under_the_pipelines_stage_log_is_one_line_and_stops_the_step(tmp_path, monkeypatch):
    import os

    from rlhf import pipeline
    from rlhf.errors import RLHFError

    settings = pipeline.PipelineConfig(run_dir=str(tmp_path / "run"))
    pid_file = tmp_path / "step.pid"
    # The step would run for ten minutes: it must be stopped when its output can no longer be kept.
    step = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('loss', 0.25); time.sleep(600)"
    )
    monkeypatch.setattr(pipeline, "open", lambda *a, **k: FullDiskFile(open(*a, **k), "loss 0.25"), raising=False)
    with pytest.raises(RLHFError) as raised:
        pipeline.Pipeline(settings)._run([sys.executable, "-c", step], "sft")
    assert str(raised.value).startswith(f"no space left on device writing {tmp_path / 'run' / 'logs' / 'sft.log'} (")
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_ppo_with_no_steps_is_one_line_before_any_model_loads(tmp_path, capsys, steps):
    from rlhf.stages.ppo import main

    argv = [
        "--model_name_or_path",
        str(tmp_path / "no_model"),
        "--reward_model",
        str(tmp_path / "no_rm"),
        "--prompts_file",
        str(tmp_path / "prompts.jsonl"),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        steps,
    ]
    assert f"max_steps must be >= 1, got {steps}" in one_line_error(capsys, main, argv)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--actor_learning_rate", "nan"], "actor_learning_rate must be a finite number, got nan"),
        (["--critic_learning_rate", "-0.1"], "critic_learning_rate must be >= 0, got -0.1"),
        (["--lam", "inf"], "lam must be a finite number, got inf"),
        (["--gamma", "1.5"], "gamma must be between 0 and 1, got 1.5"),
        (["--vf_coef", "0"], "vf_coef must be > 0, got 0.0"),
        (["--temperature", "nan"], "temperature must be > 0, got nan"),
    ],
)
def test_an_impossible_ppo_number_is_one_line_before_any_model_loads(flags, named, tmp_path, capsys):
    from rlhf.stages.ppo import main

    argv = [
        "--model_name_or_path",
        str(tmp_path / "no_model"),
        "--reward_model",
        str(tmp_path / "no_rm"),
        "--prompts_file",
        str(tmp_path / "prompts.jsonl"),
        "--output_dir",
        str(tmp_path / "run"),
        *flags,
    ]
    assert one_line_error(capsys, main, argv) == f"error: {named}"
    assert not (tmp_path / "run").exists()


# -- the pipeline killed between a stage's registration and its own record -----------------------------------------


class Killed(BaseException):
    """A SIGKILL at that point: nothing after it runs."""


def _stage_that_registers(registry: Registry, calls: list, kill_before: str | None):
    """Stands in for `python -m rlhf.stages.sft`: saves a model and ends through the stages' own epilogue.
    `kill_before` names the file whose write the kill beats."""
    from dataclasses import dataclass

    from rlhf.stages import epilogue

    @dataclass
    class StageSettings:
        output_dir: str
        register_as: str = ""

    def run(command: list[str], stage: str) -> None:
        calls.append(stage)
        output_dir = Path(command[command.index("--output_dir") + 1])
        output_dir.mkdir(parents=True, exist_ok=True)
        final_dir = _model_dir(output_dir / "final_model")
        config = StageSettings(output_dir=str(output_dir))
        real_write = epilogue.atomic_write_json

        def write(path, value):
            if Path(path).name == kill_before:
                raise Killed
            real_write(path, value)

        epilogue.atomic_write_json = write
        try:
            epilogue.write_and_register(
                config,
                registry,
                final_dir,
                stage=stage,
                metrics={"train_loss": 1.0},
                base_model="base",
                parents=[],
                data_files=[],
            )
        finally:
            epilogue.atomic_write_json = real_write

    return run


@pytest.mark.parametrize("killed_before", ["registered.json", "pipeline_state.json"])
def test_a_pipeline_killed_after_a_stage_registered_reuses_that_entry_on_the_rerun(tmp_path, killed_before):
    from rlhf.pipeline import Pipeline, PipelineConfig

    config_file = tmp_path / "sft.yaml"
    config_file.write_text("max_steps: 2\n")
    settings = PipelineConfig(run_dir=str(tmp_path / "run"))

    first = Pipeline(settings)
    calls: list[str] = []
    stage_kill = killed_before if killed_before != "pipeline_state.json" else None
    first._run = _stage_that_registers(first.registry, calls, kill_before=stage_kill)
    if killed_before == "pipeline_state.json":
        real_save, saves = first._save_state, []

        def save_state():  # the "running" record is written; the kill beats the "done" one
            saves.append(1)
            if len(saves) > 1:
                raise Killed
            real_save()

        first._save_state = save_state
    with pytest.raises(Killed):
        first._trained_stage("sft", str(config_file), {}, {}, [])
    assert [entry.reference for entry in first.registry.entries()] == ["sft@1"] and calls == ["sft"]

    rerun = Pipeline(settings)
    rerun._run = _stage_that_registers(rerun.registry, calls, kill_before=None)
    assert rerun._trained_stage("sft", str(config_file), {}, {}, []) == "sft@1"
    assert calls == ["sft"], "the stage ran again"
    assert [entry.reference for entry in rerun.registry.entries()] == ["sft@1"]
    assert json.loads((tmp_path / "run" / "pipeline_state.json").read_text())["sft"]["reference"] == "sft@1"


def test_the_pipelines_stage_log_keeps_a_killed_attempts_output_under_its_own_header(tmp_path):
    from rlhf.pipeline import Pipeline, PipelineConfig

    settings = PipelineConfig(run_dir=str(tmp_path / "run"))
    first_run = Pipeline(settings)
    # The step is SIGKILLed right after printing, with no chance to flush: only an unbuffered child and a
    # line-buffered log keep that line.
    killed = "import os, signal; print('step 7: loss 0.25'); os.kill(os.getpid(), signal.SIGKILL)"
    first_run._run([sys.executable, "-c", "print('tasks written')"], "labels")
    with pytest.raises(Exception, match="exit code -9"):
        first_run._run([sys.executable, "-c", killed], "labels")
    # The re-run is a new pipeline process; its attempt runs two commands, as the labels stage does.
    rerun = Pipeline(settings)
    rerun._run([sys.executable, "-c", "print('resumed at step 7')"], "labels")
    rerun._run([sys.executable, "-c", "print('rankings imported')"], "labels")

    log = (tmp_path / "run" / "logs" / "labels.log").read_text()
    assert log.count("==== attempt ") == 2, log
    first, second = log.split("==== attempt 2, started ")
    assert first.startswith("==== attempt 1, started ")
    assert "tasks written" in first and "step 7: loss 0.25" in first
    assert "resumed at step 7" in second and "rankings imported" in second and "step 7: loss" not in second


# -- bad inputs: one line, exit 2, nothing trained or registered ---------------------------------------------------


def _rankings_file(workspace: Path, tmp_path: Path, edit) -> str:
    rows = [json.loads(line) for line in (workspace / "rankings.jsonl").read_text().splitlines()]
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in edit(rows)))
    return str(path)


def _with_a_deep_second_line(path: str) -> str:
    lines = Path(path).read_text().splitlines(keepends=True)
    Path(path).write_text(lines[0] + "[" * 10**5 + "]" * 10**5 + "\n" + "".join(lines[1:]))
    return path


def _damaged_model(workspace: Path, tmp_path: Path, damage) -> str:
    model = tmp_path / "model"
    shutil.copytree(workspace / "base", model)
    damage(model)
    return str(model)


def _without_pad_and_eos(model: Path) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (model / name).is_file():
            settings = json.loads((model / name).read_text())
            for key in ("pad_token", "eos_token"):
                settings.pop(key, None)
            (model / name).write_text(json.dumps(settings))


def _weights(damage):
    def apply(model: Path) -> None:
        weights = model / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))

    return apply


def _needing_its_own_code(model: Path) -> None:
    """config.json names a model type transformers does not have, whose classes its auto_map imports from the
    directory; that code would end the test if it ran."""
    settings = json.loads((model / "config.json").read_text())
    settings.update(
        model_type="llama_of_its_own",
        auto_map={"AutoConfig": "modeling_own.OwnConfig", "AutoModelForCausalLM": "modeling_own.OwnModel"},
    )
    (model / "config.json").write_text(json.dumps(settings))
    (model / "modeling_own.py").write_text("raise SystemExit('the model directory's own code ran')\n")


# A chat template that reaches for Python's internals through a string's class (the classic Jinja escape).
ESCAPING_TEMPLATE = (
    "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


def _with_escaping_chat_template(model: Path) -> None:
    (model / "chat_template.jinja").write_text(ESCAPING_TEMPLATE)


def _chat_demonstrations(workspace: Path, tmp_path: Path) -> str:
    path = tmp_path / "chats.jsonl"
    records = [json.loads(line) for line in (workspace / "demos.jsonl").read_text().splitlines()]
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["completion"]},
                    ]
                }
            )
            + "\n"
            for r in records
        )
    )
    return str(path)


def _deepspeed_file(tmp_path: Path, text: str) -> str:
    (tmp_path / "ds.json").write_text(text)
    return str(tmp_path / "ds.json")


BAD_TRAINER_INPUTS = {
    "ranks beyond K": (
        "rm",
        lambda w, t: [
            "--train_file",
            _rankings_file(w, t, lambda rows: [{**rows[0], "ranks": [1, 10**30, 3]}, *rows[1:]]),
        ],
        "rankings.jsonl: record 1: field 'ranks': must be places from 1 (best) to 3, got 1, 100...(31 digits), 3",
    ),
    "one ranking, one held out": (
        "rm",
        lambda w, t: ["--train_file", _rankings_file(w, t, lambda rows: rows[:1]), "--eval_fraction", "0.1"],
        "rankings.jsonl: 1 prompt(s): holding out eval_fraction 0.1 of them (at least one) leaves none to train on",
    ),
    "eval_fraction 1": ("rm", lambda w, t: ["--eval_fraction", "1.0"], "eval_fraction must be at least 0 and below 1"),
    "identical completions": (
        "rm",
        lambda w, t: [
            "--train_file",
            _rankings_file(
                w, t, lambda rows: [*rows[:4], {**rows[4], "completions": [" cat", " cat", " cat"]}, *rows[5:]]
            ),
        ],
        "rankings.jsonl: record id 'r4': field 'completions': all completions are identical",
    ),
    "truncated weights": (
        "sft",
        lambda w, t: ["--model_name_or_path", _damaged_model(w, t, _weights(lambda data: data[: len(data) // 2]))],
        "model/model.safetensors: cut short",
    ),
    "random weights": (
        "sft",
        lambda w, t: ["--model_name_or_path", _damaged_model(w, t, _weights(lambda data: bytes(range(256)) * 20))],
        "model/model.safetensors: not a safetensors file",
    ),
    "empty weights": (
        "rm",
        lambda w, t: ["--model_name_or_path", _damaged_model(w, t, _weights(lambda data: b""))],
        "model/model.safetensors: not a safetensors file (0 bytes)",
    ),
    "no pad, no EOS": (
        "sft",
        lambda w, t: ["--model_name_or_path", _damaged_model(w, t, _without_pad_and_eos)],
        "model: the tokenizer has neither a pad nor an EOS token",
    ),
    "a ranking nested 10^5 deep": (
        "rm",
        lambda w, t: ["--train_file", _with_a_deep_second_line(_rankings_file(w, t, lambda rows: rows))],
        "rankings.jsonl: record 2: nested deeper than 100 levels",
    ),
    "config.json nested 10^5 deep": (
        "rm",
        lambda w, t: [
            "--model_name_or_path",
            _damaged_model(
                w, t, lambda model: (model / "config.json").write_text('{"a": ' + "[" * 10**5 + "]" * 10**5 + "}")
            ),
        ],
        "model/config.json: nested deeper than 100 levels",
    ),
    "model code of its own (SFT)": (
        "sft",
        lambda w, t: ["--model_name_or_path", _damaged_model(w, t, _needing_its_own_code)],
        "/model': it needs code shipped with the model (its auto_map), which runs only with trust_remote_code: true",
    ),
    "model code of its own (RM)": (
        "rm",
        lambda w, t: ["--model_name_or_path", _damaged_model(w, t, _needing_its_own_code)],
        "/model': it needs code shipped with the model (its auto_map)",
    ),
    "chat template escaping the sandbox": (
        "sft",
        lambda w, t: [
            "--model_name_or_path",
            _damaged_model(w, t, _with_escaping_chat_template),
            "--train_file",
            _chat_demonstrations(w, t),
            "--eval_file",
            "",
        ],
        "/model/chat_template.jinja: the chat template tried to leave Jinja's sandbox and was stopped (access to "
        "attribute '__class__' of 'str' object is unsafe.); use a model whose template you trust",
    ),
    "contradictory DeepSpeed batch": (
        "sft",
        lambda w, t: [
            "--deepspeed",
            _deepspeed_file(
                t,
                json.dumps(
                    {
                        "train_batch_size": 7,
                        "train_micro_batch_size_per_gpu": 8,
                        "gradient_accumulation_steps": 1,
                        "zero_optimization": {"stage": 0},
                    }
                ),
            ),
        ],
        "ds.json: contradicts the stage's settings (ds train_batch_size=7 vs hf train_batch_size (calculated)=8)",
    ),
    "malformed DeepSpeed (SFT)": (
        "sft",
        lambda w, t: ["--deepspeed", _deepspeed_file(t, '{"zero_optimization": {')],
        "ds.json: not valid JSON",
    ),
    "malformed DeepSpeed (RM)": (
        "rm",
        lambda w, t: ["--deepspeed", _deepspeed_file(t, '{"bf16": {"enabled": 1,}}')],
        "ds.json: not valid JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRAINER_INPUTS))
def test_a_bad_trainer_stage_input_is_one_line_naming_it_and_trains_nothing(case, workspace, tmp_path, capsys):
    stage, flags, named = BAD_TRAINER_INPUTS[case]
    out = tmp_path / "out"
    message = one_line_error(
        capsys, stage_main(stage), trainer_stage_args(stage, workspace, out, *flags(workspace, tmp_path))
    )
    assert named in message, message
    assert not list(out.glob("run/checkpoint-*")) and not (out / "registry" / "entries").exists()


def test_a_model_that_needs_its_own_code_is_refused_before_any_model_loads(workspace, tmp_path, capsys, monkeypatch):
    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.errors import ConfigError
    from rlhf.stages import prologue

    model = _damaged_model(workspace, tmp_path, _needing_its_own_code)
    monkeypatch.setattr(prologue, "load_trainable", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    message = one_line_error(
        capsys, stage_main("sft"), trainer_stage_args("sft", workspace, tmp_path / "out", "--model_name_or_path", model)
    )
    assert message == (
        f"error: cannot load model config from '{model}': it needs code shipped with the model (its "
        f"auto_map), which runs only with trust_remote_code: true; set that only if you trust its "
        f"author"
    )
    # Loading it anyway (labels export, evaluation) says the same, not transformers' traceback.
    with pytest.raises(ConfigError, match=f"cannot load model from '{model}': it needs code shipped with the model"):
        load_adapted(model, task="causal_lm")


def test_a_ppo_model_that_needs_its_own_code_is_one_line_naming_its_role(models, tmp_path, capsys):
    from rlhf.stages.ppo import main

    critic = tmp_path / "critic"
    shutil.copytree(models["reward"], critic)
    _needing_its_own_code(critic)
    message = one_line_error(
        capsys, main, ppo_args({**models, "reward": str(critic)}, tmp_path, reward_model=models["reward"])
    )
    assert message.startswith(
        f"error: critic model: cannot load model config from '{critic}': it needs code "
        f"shipped with the model (its auto_map)"
    )


@pytest.mark.parametrize("prompt", [[1, 2, 3], "   \n\t", 7])
def test_a_ppo_prompt_that_is_not_text_or_messages_is_one_line_naming_the_record(prompt, models, tmp_path, capsys):
    from rlhf.stages.ppo import main

    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": "a good prompt"})] * 2 + [json.dumps({"prompt": prompt})]
    prompts.write_text("\n".join(lines) + "\n")
    message = one_line_error(capsys, main, ppo_args({**models, "prompts": str(prompts)}, tmp_path))
    assert message == (
        f"error: {prompts}: record 3: field 'prompt': must be a non-empty string or a list of chat "
        f"messages {{role, content}}"
    )


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_missing_version_of_a_registered_model_lists_the_versions_there_are(stage, workspace, tmp_path, capsys):
    registry = Registry(tmp_path / "registry")
    registry.register("sft", "sft", _damaged_model(workspace, tmp_path, lambda model: None))
    argv = trainer_stage_args(stage, workspace, tmp_path, "--model_name_or_path", "sft@99")
    message = one_line_error(capsys, stage_main(stage), argv)
    assert message == f"error: registry {registry.root}: no version 99 of 'sft' (have sft@1)"
