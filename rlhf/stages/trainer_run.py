"""The train() call of the Trainer stages (SFT, RM), made to survive what clusters do to jobs.

resume        from the newest *whole* checkpoint in output_dir; one cut short is stepped over and removed;
              the resumed run's train_loss and log rows are the uninterrupted run's
safe loads    every checkpoint file checked before loading, and loaded with weights_only=True
SIGTERM       the step in progress ends, a checkpoint is saved, and the stage exits 0 without registering
disk full     one line naming the checkpoint; the partial one removed, the last whole one left to resume
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from rlhf import _compat, checkpoint_files, distributed
from rlhf.errors import RLHFError
from rlhf.io import is_disk_full
from rlhf.stop_request import StopRequest

# The Trainer's names: checkpoint-<global step>/, with trainer_state.json written last.
TRAINER_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def train(trainer, config):
    """trainer.train(), resumed as the config says. Returns the Trainer's TrainOutput, or None when SIGTERM
    stopped the run (after saving a checkpoint)."""
    from transformers import TrainerCallback

    class SaveAndStopOnSigterm(TrainerCallback):
        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            if stop.any_rank():  # every rank, every step: the save that follows is a collective
                control.should_save = control.should_training_stop = True
                self.stopped = True

    class LogWithEverySave(TrainerCallback):
        """Log whenever a checkpoint is saved, so that the logged rows up to a checkpoint cover every one of its
        steps: a run resumed from it then knows the loss of each step before (`whole_run_loss`), and its later rows
        average the same steps as the uninterrupted run's, whose logs fall at the same steps."""

        def on_step_end(self, args, state, control, **kwargs):
            control.should_log = control.should_log or control.should_save

        on_epoch_end = on_step_end

    resume_from = resume_argument(config)
    stop = StopRequest()
    callback = SaveAndStopOnSigterm()
    trainer.add_callback(callback)
    trainer.add_callback(LogWithEverySave())  # after every callback that may ask for a save
    evaluate_on_start = trainer.args.eval_on_start
    if resume_from:
        # The evaluation before training is in the checkpoint's log history already; a second one would add a row.
        trainer.args.eval_on_start = False
        _compat.restore_sft_token_count(trainer, _logged_token_count(Path(resume_from)))
    try:
        with checkpoint_files.weights_only_loading():
            result = trainer.train(resume_from_checkpoint=resume_from)
    except BaseException as error:
        if not is_disk_full(error):
            raise
        raise RLHFError(_after_a_full_disk(Path(config.output_dir), error)) from None
    finally:
        stop.restore()
        trainer.args.eval_on_start = evaluate_on_start
    if callback.stopped:
        if distributed.is_main_process():
            saved = trainer_checkpoints(Path(config.output_dir))
            print(f"SIGTERM: saved {max(saved)[1] if saved else config.output_dir}; resume with --resume", flush=True)
        return None
    if resume_from:
        # The Trainer's training_loss averages only the steps of this process; the run is all of its steps.
        start_step = _checkpoint_state(Path(resume_from))["global_step"]
        result = result._replace(
            training_loss=whole_run_loss(
                trainer.state.log_history, start_step, result.training_loss, result.global_step
            )
        )
        for row in trainer.state.log_history:
            if "train_loss" in row:  # the Trainer's summary row says the same
                row["train_loss"] = result.training_loss
    return result


def _checkpoint_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def _logged_token_count(checkpoint: Path) -> int | None:
    """The training tokens counted up to a checkpoint, as its last log row says (TRL's `num_tokens`), or None."""
    counts = [row["num_tokens"] for row in _checkpoint_state(checkpoint)["log_history"] if "num_tokens" in row]
    return int(counts[-1]) if counts else None


def whole_run_loss(log_history: list[dict], start_step: int, resumed_loss: float, end_step: int) -> float:
    """The mean training loss per step of a run resumed at `start_step`: the logged losses of the steps before
    (each the mean of its logging interval) and the resumed part's mean, weighted by their steps."""
    total, steps, previous = 0.0, 0, 0
    for row in log_history:
        if "loss" in row and previous < row["step"] <= start_step:
            total += row["loss"] * (row["step"] - previous)
            steps += row["step"] - previous
            previous = row["step"]
    resumed_steps = end_step - start_step
    total += resumed_loss * resumed_steps
    steps += resumed_steps
    return total / steps if steps else resumed_loss


def _after_a_full_disk(output_dir: Path, error: BaseException) -> str:
    """The message for the user; alone, this process first removes the checkpoints the failed save left partial.

    Among several processes the others may still be writing into them (see rlhf.ppo.checkpoint.save_checkpoint),
    so they stay, and --resume steps over them.
    """
    candidates = trainer_checkpoints(output_dir)
    chosen, _ = checkpoint_files.newest_whole(candidates, [TRAINER_STATE])
    if distributed.world_size() == 1:
        partial = _remove_newer_than(chosen, candidates)
        return checkpoint_files.disk_full_message(partial[0] if partial else output_dir, error, partial, chosen)
    partial = _newer_than(chosen, candidates)
    return checkpoint_files.disk_full_message(
        partial[0] if partial else output_dir, error, [], chosen, left_for_next_run=partial
    )


def _newer_than(chosen: Path | None, candidates: list[tuple[int, Path]]) -> list[Path]:
    chosen_step = next((step for step, path in candidates if path == chosen), -1)
    return [path for step, path in sorted(candidates) if step > chosen_step]


def _remove_newer_than(chosen: Path | None, candidates: list[tuple[int, Path]]) -> list[Path]:
    removed = _newer_than(chosen, candidates)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def resume_argument(config) -> str | None:
    """The Trainer's resume_from_checkpoint: a path, the newest whole checkpoint in output_dir, or None.

    `--resume` with no checkpoint yet is a fresh start, so that one command serves a first run and a
    re-run after a kill. A checkpoint cut short by a kill or a full disk is stepped over, saying so, and
    removed, so that the Trainer writes that step afresh. The chosen one is checked for unsafe pickles.
    """
    value = config.resume_from_checkpoint
    if value not in (None, "", "false", "False", "true", "True"):
        problem = checkpoint_files.directory_problem(Path(value), [TRAINER_STATE])
        if problem:
            raise RLHFError(f"resume_from_checkpoint {value} is not a whole checkpoint: {problem}")
        checkpoint_files.check_safe_to_load(Path(value))
        return value
    if not (config.resume or value in ("true", "True")):
        return None
    candidates = trainer_checkpoints(Path(config.output_dir))
    chosen, passed_over = checkpoint_files.newest_whole(candidates, [TRAINER_STATE])
    distributed.barrier()  # every rank has chosen before rank 0 removes what it stepped over
    if passed_over and distributed.is_main_process():
        print(checkpoint_files.fallback_message(chosen, passed_over), flush=True)
        _remove_newer_than(chosen, candidates)
    distributed.barrier()
    return str(chosen) if chosen is not None else None


def trainer_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    return [
        (int(m.group(1)), path)
        for path in output_dir.iterdir()
        if (m := TRAINER_CHECKPOINT.match(path.name)) and path.is_dir()
    ]
