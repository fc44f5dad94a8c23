"""Tracking a PPO run: each step's metrics, one JSON object per step in ppo_metrics.jsonl, TensorBoard scalars
and a progress bar.

`step_metrics` averages a step's values over ranks (`distributed.mean_over_ranks`); rank 0 writes. On resume, rows
after the checkpoint's step are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from rlhf import distributed
from rlhf.io import atomic_write_text, disk_full_is_one_line
from rlhf.ppo.reward_aggregation import ensemble_mean, ensemble_std
from rlhf.ppo.rewards import explained_variance, is_stop_token
from rlhf.ppo.rollout import Rollout
from rlhf.run_files import PPO_METRICS, read_jsonl

METRICS_FILE = PPO_METRICS
BAR_KEYS = ("rm_score", "kl", "beta")


def step_metrics(
    step: int,
    rollout: Rollout,
    kl: torch.Tensor,
    result,
    beta: float,
    prompts: Sequence[Any],
    texts: Sequence[str],
    gold: Callable[[str, str], float] | None,
    times: tuple[float, float, float],
    skipped_updates: int,
    ptx: bool,
    eos_token_id: int | Sequence[int],
    kl_loss: bool = False,
    extra: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One flat row of ppo_metrics.jsonl, averaged over ranks (contracts: the PPO metric keys). The value metrics
    only with a critic (GAE); `kl_loss` only when the KL is a loss term; with a reward-model ensemble, `rm_score` is
    the aggregated score PPO optimises, `rm_score_mean` the members' mean and `rm_score_std` their disagreement
    (`ensemble_member_metrics`); `extra` (the vLLM engine's mismatch and weight-sync time) averaged with the rest."""
    mask = rollout.response_mask
    lengths = mask.sum(dim=-1).float()

    def mean_stat(name: str) -> float:
        values = [float(getattr(stats, name)) for stats in result.stats]
        return fmean(values) if values else float("nan")

    critic = rollout.values is not None

    time_generation, time_scoring, time_training = times
    values = {
        "rm_score": rollout.scores.float().mean().item(),
        "kl": kl.sum(dim=-1).mean().item(),
        "entropy": mean_stat("entropy"),
        "response_length": lengths.mean().item(),
        "policy_loss": mean_stat("policy_loss"),
        "clip_fraction": mean_stat("clip_fraction"),
        "approx_kl": mean_stat("approx_kl"),
        "non_eos_fraction": non_eos_fraction(rollout, eos_token_id),
        "time_generation": time_generation,
        "time_scoring": time_scoring,
        "time_training": time_training,
        "tokens_per_second": lengths.sum().item() / max(time_generation, 1e-9),
    }
    if gold is not None:
        values["gold_score"] = fmean(gold(prompt, text) for prompt, text in zip(prompts, texts))
    values.update(ensemble_member_metrics(rollout.member_scores))
    if ptx:
        values["ptx_loss"] = mean_stat("ptx_loss")
    if critic:  # a critic-free run has no value metrics at all, rather than zeros that look measured
        values["value_loss"] = mean_stat("value_loss")
        values["value_explained_variance"] = float(explained_variance(rollout.values, rollout.returns, mask))
    if kl_loss:
        values["kl_loss"] = mean_stat("kl_loss")
    values.update(extra or {})
    values = distributed.mean_over_ranks(values)
    # Throughput adds up over ranks; the mean above is per rank.
    values["tokens_per_second"] *= distributed.world_size()
    return {"step": step, **values, "beta": beta, "skipped_updates": skipped_updates}


def ensemble_member_metrics(member_scores: torch.Tensor | None) -> dict[str, float]:
    """{"rm_score_mean", "rm_score_std"}: over the responses, the mean of the members' mean score and of their
    (population) std; {} for one reward model."""
    if member_scores is None:
        return {}
    return {
        "rm_score_mean": ensemble_mean(member_scores.float()).mean().item(),
        "rm_score_std": ensemble_std(member_scores.float()).mean().item(),
    }


def non_eos_fraction(rollout: Rollout, eos_token_id: int | Sequence[int]) -> float:
    """Share of responses whose last real token is not EOS (they hit max_new_tokens)."""
    mask = rollout.response_mask.bool()
    lengths = mask.sum(dim=-1)
    last = rollout.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    ended = (lengths > 0) & is_stop_token(last, eos_token_id)
    return 1.0 - ended.float().mean().item()


class MetricsLogger:
    def __init__(
        self,
        output_dir: str | Path,
        report_to: list[str],
        total_steps: int,
        start_step: int,
        show_progress: bool = True,
    ):
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
        # read_jsonl leaves out a last line torn by a kill or a full disk; the rows after the checkpoint go too.
        kept = [row for row in read_jsonl(self.path) if row["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in row.items()
        }
        # A full disk may tear this line; read_jsonl leaves a torn last line out when the run resumes.
        with disk_full_is_one_line(self.path), open(self.path, "a", encoding="utf-8") as file:
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
    return read_jsonl(Path(output_dir) / METRICS_FILE)
