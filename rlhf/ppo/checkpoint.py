"""PPO checkpoints: everything a resumed run needs to continue as if it had never stopped.

    output_dir/checkpoints/step-<N>/
        actor/, critic/        DeepSpeed checkpoints: weights and optimiser states (each rank its shards); no
                               critic/ for a critic-free estimator
        trainer_state.json     step, KL controller, reward running moments, skip counters
        rng_state_<rank>.pt    torch, Python and NumPy generator states of each rank

A checkpoint is written in a hidden staging directory and renamed into place by rank 0 once every rank has
finished writing, so `latest_checkpoint` never sees half of one. The data position is the step: the prompt
order of every epoch is a function of the seed (see rlhf.ppo.data), so step N's prompts are known.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhf import checkpoint_files, distributed
from rlhf.errors import RLHFError
from rlhf.io import atomic_write_json, is_disk_full

STEP_PATTERN = re.compile(r"^step-(\d+)$")
STAGING_PATTERN = re.compile(r"^\.step-(\d+)\.saving$")
TRAINER_STATE = "trainer_state.json"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    directory = checkpoints_dir(output_dir)
    if not directory.is_dir():
        return None
    found = [
        (int(m.group(1)), path)
        for path in directory.iterdir()
        if (m := STEP_PATTERN.match(path.name)) and (path / TRAINER_STATE).is_file()
    ]
    return max(found)[1] if found else None


def resumable_checkpoint(output_dir: str | Path, with_critic: bool = True) -> Path | None:
    """The newest checkpoint whose every file is whole (a damaged newer one is stepped over, saying so), or None.
    `with_critic`: the run has a critic, whose checkpoint must be there too.

    Raises UnsafeCheckpointError when the chosen one pickles a type that states never hold.
    """
    directory = checkpoints_dir(output_dir)
    if not directory.is_dir():
        return None
    candidates = [(int(m.group(1)), path) for path in directory.iterdir() if (m := STEP_PATTERN.match(path.name))]
    engines = ["actor", "critic"] if with_critic else ["actor"]
    required = [TRAINER_STATE, *engines, f"rng_state_{distributed.global_rank()}.pt"]
    chosen, passed_over = checkpoint_files.newest_whole(candidates, required)
    if passed_over and distributed.is_main_process():
        print(checkpoint_files.fallback_message(chosen, passed_over), flush=True)
    return chosen


def save_checkpoint(output_dir: str | Path, step: int, actor, critic, trainer_state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` (every rank calls this) and keep only the newest `keep` (0: all). `critic` is None
    for a critic-free estimator."""
    directory = checkpoints_dir(output_dir)
    final = directory / f"step-{step}"
    staging = directory / f".step-{step}.saving"  # STAGING_PATTERN
    if distributed.is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    distributed.barrier()
    try:
        actor.save_checkpoint(str(staging), tag="actor", save_latest=False)
        if critic is not None:
            critic.save_checkpoint(str(staging), tag="critic", save_latest=False)
        torch.save(rng_states(), staging / f"rng_state_{distributed.global_rank()}.pt")
        distributed.barrier()
        if distributed.is_main_process():
            atomic_write_json(staging / TRAINER_STATE, {**trainer_state, "step": step})
    except BaseException as error:
        # The staging directory is all a failed save touched, so the last whole checkpoint is as it was. Alone, this
        # process removes it. Among several, the others may still be writing into it: pulling it from under them
        # would turn their writes into errors of their own, racing this one to the launcher. The launcher stops
        # them when this rank exits, and the next run removes the directory (remove_partial_saves).
        alone = distributed.world_size() == 1
        if alone:
            shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error):
            raise RLHFError(
                checkpoint_files.disk_full_message(
                    final,
                    error,
                    [staging] if alone else [],
                    latest_checkpoint(output_dir),
                    left_for_next_run=[] if alone else [staging],
                )
            ) from None
        raise
    if distributed.is_main_process():
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        _remove_old(directory, keep)
    distributed.barrier()
    return final


def remove_partial_saves(output_dir: str | Path) -> None:
    """Remove the staging directories of saves that never finished (a kill, a full disk on one of several ranks).

    Every rank calls this before its run writes anything; rank 0 removes, the others wait for it.
    """
    directory = checkpoints_dir(output_dir)
    if distributed.is_main_process() and directory.is_dir():
        for path in directory.iterdir():
            if STAGING_PATTERN.match(path.name):
                shutil.rmtree(path, ignore_errors=True)
    distributed.barrier()


def load_checkpoint(path: Path, actor, critic) -> dict[str, Any]:
    """Restore actor, critic (unless None), optimiser states and RNG states from `path`; return its trainer state.

    Every file loads with weights_only=True, DeepSpeed's included (see rlhf.checkpoint_files).
    """
    with checkpoint_files.weights_only_loading():
        for engine, tag in ((actor, "actor"), (critic, "critic")):
            if engine is None:
                continue
            loaded, _ = engine.load_checkpoint(
                str(path), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if loaded is None:
                raise RLHFError(f"{path}: DeepSpeed found no {tag} checkpoint")
        rng_file = path / f"rng_state_{distributed.global_rank()}.pt"
        set_rng_states(torch.load(rng_file, weights_only=True))
    return json.loads((path / TRAINER_STATE).read_text())


def rng_states() -> dict[str, Any]:
    import numpy as np

    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _remove_old(directory: Path, keep: int) -> None:
    if keep <= 0:
        return
    steps = sorted((int(m.group(1)), path) for path in directory.iterdir() if (m := STEP_PATTERN.match(path.name)))
    for _, path in steps[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
