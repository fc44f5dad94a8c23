"""The advantage estimators side by side: gold win rate over SFT at matched KL on the demo, and time and memory per
step against GAE, on the demo and at ~100M parameters.

**The demo, over seeds** (`--demo-run RUN_DIR`: a finished `make demo`, whose registry holds its SFT policy and
reward model). The demo's own PPO run (RUN_DIR/ppo/resolved_config.yaml, configs/ppo.yaml as the pipeline ran it)
once per estimator and seed, the estimators alternating within each seed. GAE samples one response per prompt
(InstructGPT); the others `--samples-per-prompt` each, with the same rollout_batch_size, so that every run trains
on as many responses per step. Each run gives:

- its gold win rate over SFT at the end (held-out prompts, sampled, ties half), with the KL it ended at beside it;
- its gold score **at matched KL**. The estimators reach different KLs with the same β, and a policy further from
  SFT can buy gold with KL. So every run is read at one target KL, the highest that every run reaches: the lowest
  of the runs' peak KLs (each a mean over `KL_WINDOW` steps). Each run is read at the first step whose mean KL
  reaches it, as the mean gold score of its training samples over those steps, against the SFT policy's gold
  score (step 1: the first rollout is sampled by the SFT policy itself);
- seconds per step (generation + scoring + training, median after step 1) and the peak memory of a PPO step
  (peak RSS of the process; on a GPU also torch.cuda.max_memory_allocated), each as a ratio to GAE's at the same
  seed.

**~100M** (skipped with `--no-100m`): benchmarks/tiny_models.py's Llama at hidden 1024, 6 layers (the size of
benchmarks/ppo_vs_trl.py's 100M run), a few steps of each estimator in turn, one process: step time and the
peak memory of a step against GAE.

    python -m benchmarks.estimators --demo-run runs/demo-run --seeds 0 1 2
    python -m benchmarks.estimators --smallest          # the smoke run: tiny random models, 2 steps, seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import tiny_models
from benchmarks.common import (
    REPO,
    RESULTS_DIR,
    machine_info,
    measure_and_record,
    median,
    read_json,
    run_child,
    write_json,
)
from rlhf.config import settings_to_argv

ESTIMATORS = ("gae", "rloo", "grpo", "reinforce_pp", "reinforce_pp_baseline")
KL_WINDOW = 5  # steps whose mean KL and gold score are read at the matched KL
BLOCK = "estimators"  # the measured block of benchmarks/RESULTS.md
STEP_PHASES = ("time_generation", "time_scoring", "time_training")


@dataclass
class Settings:
    estimators: list[str] = field(default_factory=lambda: list(ESTIMATORS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    samples_per_prompt: int = 4  # of every estimator but gae, which samples one (InstructGPT)
    demo_steps: int = 0  # 0: the demo's own max_steps
    size_100m: bool = True
    steps_100m: int = 3  # the first is warm-up
    hidden_size_100m: int = 1024
    num_layers_100m: int = 6
    smallest: bool = False  # tiny random models instead of a demo run, and a few steps

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            seeds=[0],
            samples_per_prompt=2,
            demo_steps=2,
            steps_100m=2,
            hidden_size_100m=32,
            num_layers_100m=1,
            smallest=True,
        )


def group_settings(estimator: str, settings: Settings) -> dict:
    return {
        "advantage_estimator": estimator,
        "samples_per_prompt": 1 if estimator == "gae" else settings.samples_per_prompt,
    }


# ---------------------------------------------------------------------------------------------------------
# One measured run of the stage
# ---------------------------------------------------------------------------------------------------------


def measured_run(argv: list[str], output_dir: Path, log_file: Path) -> dict:
    """Run the PPO stage in a child process that measures its steps' memory; its metric rows, final metrics and
    memory."""
    memory_file = output_dir.parent / f"{output_dir.name}-memory.json"
    run_child([sys.executable, "-m", "benchmarks.estimators", "--worker", str(memory_file), "--", *argv], log_file)
    rows = [json.loads(line) for line in (output_dir / "ppo_metrics.jsonl").read_text().splitlines() if line]
    return {"rows": rows, "final": read_json(output_dir / "metrics.json"), "memory": read_json(memory_file)}


def worker(memory_file: Path, stage_argv: list[str]) -> None:
    """The stage, each PPO step's peak memory recorded (`memory_phases`), and the resident memory after setup
    (the models loaded)."""
    import torch

    from benchmarks.memory_phases import Phases
    from rlhf.config import parse_config
    from rlhf.stages.ppo import PPORecipe, PPOStageConfig, run

    phases = Phases(cuda=torch.cuda.is_available())
    phases.wrap(PPORecipe, "setup", "setup")
    phases.wrap(PPORecipe, "ppo_step", "step")
    run(parse_config(PPOStageConfig, stage_argv))
    steps = [record for record in phases.records if record["phase"] == "step"]
    setup = next(record for record in phases.records if record["phase"] == "setup")
    memory = {"setup_rss_mb": setup["rss_end_mb"], "step_peak_rss_mb": max(r["peak_mb"] for r in steps)}
    if phases.cuda:
        memory["step_peak_cuda_mb"] = max(r["cuda_peak_mb"] for r in steps)
    write_json(memory_file, memory)


def seconds_per_step(rows: list[dict]) -> float:
    """Median of generation + scoring + training over the steps after the first (warm-up)."""
    timed = rows[1:] or rows
    return median([sum(row[phase] for phase in STEP_PHASES) for row in timed])


def step_memory_mb(memory: dict) -> float:
    """The step's peak: device memory where there is a GPU, else the process's resident set."""
    return memory.get("step_peak_cuda_mb", memory["step_peak_rss_mb"])


# ---------------------------------------------------------------------------------------------------------
# Matched KL
# ---------------------------------------------------------------------------------------------------------


def window_means(values: list[float], window: int) -> list[float]:
    """Mean of each run of `window` consecutive values (fewer values: their one mean)."""
    window = min(window, len(values))
    return [statistics.fmean(values[i : i + window]) for i in range(len(values) - window + 1)]


def matched_kl_target(runs: list[list[dict]], window: int = KL_WINDOW) -> float:
    """The highest KL that every run reaches: the lowest of the runs' peak windowed KLs."""
    return min(max(window_means([row["kl"] for row in rows], window)) for rows in runs)


def at_kl(rows: list[dict], target: float, window: int = KL_WINDOW) -> dict:
    """Where a run's windowed KL first reaches `target`: that window's first step, mean KL and mean gold score."""
    kls = window_means([row["kl"] for row in rows], window)
    golds = window_means([row["gold_score"] for row in rows], window)
    start = next(index for index, kl in enumerate(kls) if kl >= target)
    return {"step": rows[start]["step"], "kl": kls[start], "gold_score": golds[start]}


# ---------------------------------------------------------------------------------------------------------
# The demo, over seeds
# ---------------------------------------------------------------------------------------------------------


def demo_base(demo_run: Path | None, workdir: Path, settings: Settings) -> tuple[list[str], dict]:
    """The stage arguments every demo run shares, and the model directories: the demo's own PPO config with its
    models resolved in its registry, or (smallest) configs/ppo.yaml on tiny random models."""
    if settings.smallest:
        models = tiny_models.build(workdir / "models", tiny_models.TinySize(32, 1))
        paths = {
            "model_name_or_path": models["policy"],
            "critic_model": models["reward"],
            "reward_model": models["reward"],
            "prompts_file": models["prompts"],
            "eval_prompts_file": models["prompts"],
        }
        small = {
            "max_steps": settings.demo_steps,
            "rollout_batch_size": 8,
            "minibatch_size": 4,
            "max_new_tokens": 4,
            "eval_prompts": 4,
            "eval_samples_per_prompt": 1,
            "save_steps": 0,
        }
        return ["--config", str(REPO / "configs" / "ppo.yaml")], {**paths, **small}
    from rlhf.config import load_yaml
    from rlhf.registry import Registry, resolve_model
    from rlhf.run_files import RESOLVED_CONFIG

    resolved = demo_run / "ppo" / RESOLVED_CONFIG
    if not resolved.is_file():
        raise SystemExit(f"{resolved} not found: --demo-run needs a finished demo run (make demo)")
    config = load_yaml(resolved)
    registry = Registry(REPO / config["registry_dir"]) if config.get("registry_dir") else Registry()
    models = {
        key: resolve_model(config[key], registry)[0]
        for key in ("model_name_or_path", "critic_model", "reward_model", "reference_model")
        if config.get(key)
    }
    steps = {"max_steps": settings.demo_steps} if settings.demo_steps else {}
    return ["--config", str(resolved)], {**models, **steps, "save_steps": 0}


def run_demo(demo_run: Path | None, settings: Settings, workdir: Path, log=print) -> dict:
    base, shared = demo_base(demo_run, workdir, settings)
    runs: dict[str, list[dict]] = {estimator: [] for estimator in settings.estimators}
    for seed in settings.seeds:
        for estimator in settings.estimators:  # alternating, so that drift of the machine spreads over all
            log(f"estimators: demo, seed {seed}, {estimator}")
            name = f"demo-{estimator}-{seed}"
            output_dir = workdir / name
            overrides = {
                **shared,
                **group_settings(estimator, settings),
                "seed": seed,
                "output_dir": output_dir,
                "registry_dir": workdir / "registry",
                "register_as": f"bench-{name}",
                "report_to": "none",
                "disable_tqdm": "true",
            }
            result = measured_run(base + settings_to_argv(overrides), output_dir, workdir / f"{name}.log")
            runs[estimator].append({"seed": seed, **result})
    return summarize_demo(runs)


def summarize_demo(runs: dict[str, list[dict]]) -> dict:
    """Per estimator and seed: win rate and KL at the end, gold at matched KL, time and memory against GAE."""
    target = matched_kl_target([run["rows"] for seeded in runs.values() for run in seeded])
    gae_by_seed = {run["seed"]: run for run in runs.get("gae", [])}
    table = {}
    for estimator, seeded in runs.items():
        table[estimator] = []
        for run in seeded:
            matched = at_kl(run["rows"], target)
            row = {
                "seed": run["seed"],
                "win_rate_gold": run["final"].get("win_rate_gold"),
                "kl_final": run["final"].get("kl_final"),
                "gold_score_sft": run["rows"][0]["gold_score"],
                "matched_step": matched["step"],
                "matched_kl": matched["kl"],
                "gold_at_matched_kl": matched["gold_score"],
                "seconds_per_step": seconds_per_step(run["rows"]),
                "step_memory_mb": step_memory_mb(run["memory"]),
                "setup_rss_mb": run["memory"]["setup_rss_mb"],
            }
            gae = gae_by_seed.get(run["seed"])
            if gae is not None:
                row["time_vs_gae"] = row["seconds_per_step"] / seconds_per_step(gae["rows"])
                row["memory_vs_gae"] = row["step_memory_mb"] / step_memory_mb(gae["memory"])
            table[estimator].append(row)
    return {"target_kl": target, "kl_window": KL_WINDOW, "rows": table, "runs": runs}


# ---------------------------------------------------------------------------------------------------------
# ~100M
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Size100M:
    """benchmarks.ppo_vs_trl's batch settings at its 100M size (its `stage_arguments` reads these)."""

    steps: int
    rollout_batch_size: int = 8
    minibatch_size: int = 8
    ppo_epochs: int = 2
    max_new_tokens: int = 16
    learning_rate: float = 1e-5
    kl_coef: float = 0.05


def run_100m(settings: Settings, workdir: Path, log=print) -> dict:
    from benchmarks.ppo_vs_trl import stage_arguments

    size = tiny_models.TinySize(settings.hidden_size_100m, settings.num_layers_100m)
    models = tiny_models.build(workdir / "models-100m", size)
    batch = Size100M(steps=settings.steps_100m)
    if settings.smallest:
        batch = Size100M(
            steps=settings.steps_100m, rollout_batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=4
        )
    rows = {}
    for estimator in settings.estimators:
        log(f"estimators: ~100M, {estimator}")
        name = f"100m-{estimator}"
        argv = stage_arguments(models, batch, workdir / name, name, **group_settings(estimator, settings))
        result = measured_run(argv, workdir / name, workdir / f"{name}.log")
        rows[estimator] = {
            "seconds_per_step": seconds_per_step(result["rows"]),
            "step_memory_mb": step_memory_mb(result["memory"]),
            "setup_rss_mb": result["memory"]["setup_rss_mb"],
            "steps": result["rows"],
        }
    for row in rows.values():
        if "gae" in rows:
            row["time_vs_gae"] = row["seconds_per_step"] / rows["gae"]["seconds_per_step"]
            row["memory_vs_gae"] = row["step_memory_mb"] / rows["gae"]["step_memory_mb"]
    return {"model": models["model"], "parameters": models["parameters"], "batch": asdict(batch), "rows": rows}


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------


def _mean(values) -> str:
    """ "mean [min, max]" over seeds ("mean" alone for one seed); "-" when none was measured."""
    values = [value for value in values if isinstance(value, (int, float))]
    if not values:
        return "-"
    spread = f" [{min(values):.3g}, {max(values):.3g}]" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3g}{spread}"


def markdown(result: dict) -> str:
    machine, s = result["machine"], result["settings"]
    memory_kind = "GPU memory allocated" if machine["gpu"] else "peak RSS"
    lines = [
        f"Measured by `python -m benchmarks.estimators{' --smallest' if s['smallest'] else ''}` on "
        f"{machine['date']}: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}.",
        "",
    ]
    demo = result["demo"]
    lines += [
        f"The demo, seeds {', '.join(map(str, s['seeds']))}; gae 1 response per prompt, the others "
        f"{s['samples_per_prompt']}; matched KL {demo['target_kl']:.3g} (the lowest peak of the runs' "
        f"{demo['kl_window']}-step mean KLs). Means over seeds [min, max].",
        "",
        f"| estimator | gold win over SFT (end) | KL at end | gold, SFT | gold at matched KL | reached at step | "
        f"s / step | vs gae | step {memory_kind} (MB) | vs gae |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    columns = (
        "win_rate_gold",
        "kl_final",
        "gold_score_sft",
        "gold_at_matched_kl",
        "matched_step",
        "seconds_per_step",
        "time_vs_gae",
        "step_memory_mb",
        "memory_vs_gae",
    )
    for estimator, rows in demo["rows"].items():
        cells = [_mean([row.get(key) for row in rows]) for key in columns]
        lines.append(f"| {estimator} | {' | '.join(cells)} |")
    big = result.get("size_100m")
    if big:
        lines += [
            "",
            f"{big['model']} ({big['parameters']['policy'] / 1e6:.1f}M parameters per model), rollout "
            f"{big['batch']['rollout_batch_size']}, minibatch {big['batch']['minibatch_size']}, "
            f"{big['batch']['ppo_epochs']} epochs, {big['batch']['max_new_tokens']} new tokens, one "
            f"process; median step after the first of {big['batch']['steps']}.",
            "",
            f"| estimator | s / step | vs gae | step {memory_kind} (MB) | vs gae | RSS after setup (MB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for estimator, row in big["rows"].items():
            time_ratio, memory_ratio = (row.get(key, float("nan")) for key in ("time_vs_gae", "memory_vs_gae"))
            lines.append(
                f"| {estimator} | {row['seconds_per_step']:.3g} | {time_ratio:.2f} | "
                f"{row['step_memory_mb']:.0f} | {memory_ratio:.2f} | {row['setup_rss_mb']:.0f} |"
            )
    return "\n".join(lines)


def run(settings: Settings, workdir: Path, demo_run: Path | None, log=print) -> dict:
    result = {
        "settings": asdict(settings),
        "machine": machine_info(),
        "demo": run_demo(demo_run, settings, workdir, log),
    }
    if settings.size_100m:
        result["size_100m"] = run_100m(settings, workdir, log)
    return result


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        worker(Path(argv[1]), argv[argv.index("--") + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-run", type=Path, help="a finished demo run (make demo): its SFT policy and RM")
    parser.add_argument("--smallest", action="store_true", help="tiny random models, 2 steps, seed 0: a smoke run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=0, help="PPO steps of each demo run; 0: the demo's own")
    parser.add_argument("--no-100m", action="store_true", help="leave out the ~100M step time and memory")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "estimators.json")
    parser.add_argument(
        "--results-dir", type=Path, default=REPO / "benchmarks", help="whose RESULTS.md gets the measured block"
    )
    parser.add_argument("--workdir", type=Path, help="kept (runs, logs, models) instead of a temporary directory")
    args = parser.parse_args(argv)
    if not args.smallest and args.demo_run is None:
        parser.error("--demo-run RUN_DIR (a finished `make demo`) is needed, or --smallest")
    settings = (
        Settings.smoke()
        if args.smallest
        else Settings(seeds=args.seeds, samples_per_prompt=args.samples_per_prompt, demo_steps=args.steps)
    )
    settings.estimators, settings.size_100m = args.estimators, not args.no_100m
    if args.smallest and args.seeds != parser.get_default("seeds"):
        settings.seeds = args.seeds
    measure_and_record(
        lambda workdir: run(settings, workdir, args.demo_run, log=lambda line: print(line, flush=True)),
        markdown,
        block=BLOCK,
        out=args.out,
        results_dir=args.results_dir,
        workdir=args.workdir,
        prefix="bench-est-",
    )


if __name__ == "__main__":
    main()
