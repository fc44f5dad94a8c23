"""Per-step PPO metrics: one JSON object per step in ppo_metrics.jsonl, TensorBoard scalars, a progress bar.

Rank 0 writes; the values are already averaged over ranks (`mean_over_ranks`). On resume, rows after the
checkpoint's step are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from rlhf import distributed
from rlhf.io import atomic_write_text

METRICS_FILE = "ppo_metrics.jsonl"
BAR_KEYS = ("rm_score", "kl", "beta")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over all ranks (one all-reduce for the lot)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dict(values)
    keys = sorted(values)
    stacked = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        stacked = stacked.cuda()
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))


class MetricsLogger:
    def __init__(self, output_dir: str | Path, report_to: list[str], total_steps: int, start_step: int,
                 show_progress: bool = True):
        self.enabled = distributed.is_main_process()
        self.path = Path(output_dir) / METRICS_FILE
        self.writer = None
        self.bar = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
        if show_progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="ppo", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                 for key, value in row.items()}
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"ppo/{key}", value, row["step"])
            self.writer.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({key: f"{row[key]:.3g}" for key in BAR_KEYS if isinstance(row.get(key), float)})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
