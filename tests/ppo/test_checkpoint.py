"""rlhf.ppo.checkpoint: which checkpoint a resume picks, and what an interrupted save leaves."""

from __future__ import annotations


def test_latest_checkpoint_ignores_unfinished_ones(tmp_path):
    from rlhf.ppo.checkpoint import TRAINER_STATE, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (10, True), (12, False)):
        directory = tmp_path / "checkpoints" / f"step-{step}"
        directory.mkdir(parents=True)
        if complete:
            (directory / TRAINER_STATE).write_text("{}")
    (tmp_path / "checkpoints" / ".step-14.saving").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-10"  # numeric order, not "step-2" > "step-10"


def test_remove_partial_saves_removes_only_unfinished_staging_directories(tmp_path):
    from rlhf.ppo.checkpoint import TRAINER_STATE, checkpoints_dir, remove_partial_saves

    remove_partial_saves(tmp_path)  # no checkpoints directory yet
    directory = checkpoints_dir(tmp_path)
    (directory / "step-2").mkdir(parents=True)
    (directory / "step-2" / TRAINER_STATE).write_text("{}")
    (directory / ".step-4.saving" / "actor").mkdir(parents=True)
    (directory / ".step-4.saving" / "rng_state_0.pt").write_bytes(b"PK partial")
    (directory / "notes.txt").write_text("a user's file")
    remove_partial_saves(tmp_path)
    assert sorted(path.name for path in directory.iterdir()) == ["notes.txt", "step-2"]
