"""Reward over-optimisation on the demo, and what a reward-model ensemble does about it (Coste et al. 2023).

A setting that over-optimises: a reward model trained on few labels (`--labels`: the first N rankings of the demo's
labels), PPO with a low `--kl-coef` for `--steps` steps (the demo runs 150 at β = 0.1), the policy's held-out gold
score, reward-model score and KL measured every `--eval-steps` (PPO's held-out evaluations, eval_metrics.jsonl).
For each seed s:

1. the RM stage trains an ensemble of `--k` on those labels (members s, s+1, …: their heads and data orders);
2. PPO runs once per variant, all from the demo's SFT policy with seed s:
   - `single`: member 0 alone as reward model and critic (the same training as the ensemble's first member, so
     that single and ensemble differ by the other members only);
   - `mean`, `min`, `mean_minus_std` (λ = `--uncertainty-coef`): the ensemble, aggregated so; the critic starts
     from the members' weight average (rlhf.rm.ensemble).

Each run's gold curve is read at its **peak**, the highest mean of `WINDOW` consecutive evaluations (one evaluation
is noisy, and the highest of many noisy ones is biased up), and at its **end**, the mean of its last `WINDOW`
evaluations; with the KL at the end likewise. The goal (issue 30): an aggregation that keeps the end at >= 95% of
its peak where the single reward model ends below 90% of its own.

    python -m benchmarks.overoptimisation --demo-run runs/demo-run --seeds 0 1 2
    python -m benchmarks.overoptimisation --smallest      # the smoke run: tiny random models, a few steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import REPO, RESULTS_DIR, machine_info, measure_and_record, read_json, run_child
from rlhf.config import settings_to_argv

BLOCK = "overoptimisation"  # the measured block of benchmarks/RESULTS.md
VARIANTS = ("single", "mean", "min", "mean_minus_std")
WINDOW = 3  # evaluations averaged at the peak and at the end
GOAL_KEPT, GOAL_FALLEN = 0.95, 0.90
PLOT = "overoptimisation.png"


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    k: int = 4
    labels: int = 500
    kl_coef: float = 0.01
    steps: int = 600
    eval_steps: int = 30
    eval_prompts: int = 100
    uncertainty_coef: float = 1.0
    jobs: int = 1  # PPO runs at a time
    smallest: bool = False

    @classmethod
    def smoke(cls) -> Settings:
        return cls(
            seeds=[0],
            variants=["single", "min"],
            k=2,
            labels=48,
            steps=2,
            eval_steps=1,
            eval_prompts=4,
            jobs=2,
            smallest=True,
        )


# ---------------------------------------------------------------------------------------------------------
# Inputs: the demo's SFT policy, labels and stage configs (or tiny ones)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    policy: str  # the SFT policy's directory
    demonstrations: str  # its training demonstrations: every member's zero
    rankings: str  # the labels, of which the first `labels` train the reward models
    rm_config: list[str]  # the RM stage's config arguments
    ppo_config: list[str]  # the PPO stage's
    ppo_settings: dict  # and what they must override


def demo_inputs(demo_run: Path) -> Inputs:
    """The demo run's SFT policy and labels, its RM stage's resolved config, and its PPO stage's (or, when PPO has
    not finished there, the PPO config file the pipeline ran it with)."""
    from rlhf.config import load_yaml
    from rlhf.registry import Registry, resolve_model
    from rlhf.run_files import RESOLVED_CONFIG

    rm_config, ppo_config = demo_run / "rm" / RESOLVED_CONFIG, demo_run / "ppo" / RESOLVED_CONFIG
    if not ppo_config.is_file() and (demo_run / RESOLVED_CONFIG).is_file():
        ppo_config = REPO / load_yaml(demo_run / RESOLVED_CONFIG)["ppo_config"]
    missing = [str(path) for path in (rm_config, ppo_config) if not path.is_file()]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: --demo-run needs a demo run whose RM stage finished")
    rm = load_yaml(rm_config)
    registry = Registry(REPO / rm["registry_dir"]) if rm.get("registry_dir") else Registry()
    policy, parent = resolve_model(rm["model_name_or_path"], registry)
    return Inputs(
        policy,
        parent.config["train_file"] if parent else "",
        rm["train_file"],
        ["--config", str(rm_config)],
        ["--config", str(ppo_config)],
        {"eval_samples_per_prompt": 1},
    )


def smallest_inputs(workdir: Path) -> Inputs:
    """A tiny SFT model, generated rankings and demonstrations (benchmarks.rm_ensemble's), configs/ppo.yaml."""
    from benchmarks.rm_ensemble import smallest_inputs as tiny

    made = tiny(workdir)
    prompts = workdir / "prompts.jsonl"
    from rlhf.demo.task import make_split

    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in make_split(32, seed=5)))
    rm = {
        key: value
        for key, value in made.items()
        if key not in ("model_name_or_path", "train_file", "normalization_file")
    }
    return Inputs(
        str(made["model_name_or_path"]),
        str(made["normalization_file"]),
        str(made["train_file"]),
        settings_to_argv(rm),
        ["--config", str(REPO / "configs" / "ppo.yaml")],
        {
            "prompts_file": prompts,
            "eval_prompts_file": prompts,
            "rollout_batch_size": 8,
            "minibatch_size": 4,
            "max_new_tokens": 4,
            "eval_samples_per_prompt": 1,
        },
    )


def first_rankings(path: str, count: int, out: Path) -> Path:
    """The first `count` rankings of a JSON Lines file, as they are."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()][:count]
    out.write_text("".join(line + "\n" for line in lines))
    return out


# ---------------------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------------------


def train_ensemble(inputs: Inputs, labels: Path, seed: int, settings: Settings, workdir: Path) -> str:
    """The RM stage's ensemble on `labels` with seed `seed`; its registered directory."""
    output_dir = workdir / f"rm-{seed}"
    overrides = {
        "model_name_or_path": inputs.policy,
        "train_file": labels,
        "normalization_file": inputs.demonstrations,
        "ensemble_size": settings.k,
        "seed": seed,
        "output_dir": output_dir,
        "registry_dir": workdir / "registry",
        "register_as": f"bench-rm-{seed}",
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": "true",
    }
    run_child(
        [sys.executable, "-m", "rlhf.stages.rm", *inputs.rm_config, *settings_to_argv(overrides)],
        workdir / f"rm-{seed}.log",
    )
    return read_json(output_dir / "registered.json")["path"]


def variant_models(variant: str, ensemble: str) -> dict:
    from rlhf.rm.ensemble import member_dirs

    if variant == "single":
        member = str(member_dirs(ensemble)[0])
        return {"reward_model": member, "critic_model": member}
    return {"reward_model": ensemble, "critic_model": ensemble, "reward_aggregation": variant}


def run_ppo(inputs: Inputs, ensemble: str, variant: str, seed: int, settings: Settings, workdir: Path) -> dict:
    """One PPO run; its held-out evaluations and step rows."""
    name = f"ppo-{variant}-{seed}"
    output_dir = workdir / name
    overrides = {
        **inputs.ppo_settings,
        **variant_models(variant, ensemble),
        "model_name_or_path": inputs.policy,
        "reference_model": inputs.policy,
        "kl_coef": settings.kl_coef,
        "max_steps": settings.steps,
        "eval_steps": settings.eval_steps,
        "eval_steps_prompts": settings.eval_prompts,
        "uncertainty_coef": settings.uncertainty_coef,
        "seed": seed,
        "save_steps": 0,
        "output_dir": output_dir,
        "registry_dir": workdir / "registry",
        "register_as": f"bench-{name}",
        "report_to": "none",
        "disable_tqdm": "true",
        "gold_scorer": "demo",
    }
    run_child(
        [sys.executable, "-m", "rlhf.stages.ppo", *inputs.ppo_config, *settings_to_argv(overrides)],
        workdir / f"{name}.log",
        timeout=6 * 3600,
    )
    rows = [json.loads(line) for line in (output_dir / "eval_metrics.jsonl").read_text().splitlines() if line]
    return {"variant": variant, "seed": seed, "evaluations": rows}


def run(settings: Settings, workdir: Path, demo_run: Path | None, log=print) -> dict:
    inputs = smallest_inputs(workdir) if settings.smallest else demo_inputs(demo_run)
    labels = first_rankings(inputs.rankings, settings.labels, workdir / "labels.jsonl")
    runs, reward_models = [], {}

    def one(job):
        variant, seed, ensemble = job
        log(f"overoptimisation: seed {seed}, PPO with {variant}")
        return run_ppo(inputs, ensemble, variant, seed, settings, workdir)

    for seed in settings.seeds:
        log(f"overoptimisation: seed {seed}, an ensemble of {settings.k} on {settings.labels} rankings")
        ensemble = train_ensemble(inputs, labels, seed, settings, workdir)
        metrics = read_json(workdir / f"rm-{seed}" / "metrics.json")
        reward_models[seed] = {
            key: metrics.get(key)
            for key in (
                "eval_pairwise_accuracy",
                "eval_member_pairwise_accuracy",
                "eval_ensemble_std",
                "eval_ensemble_relative_std",
                "gold_agreement",
                "train_rankings",
                "eval_rankings",
            )
        }
        with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
            runs += list(pool.map(one, [(variant, seed, ensemble) for variant in settings.variants]))
    return {
        "settings": asdict(settings),
        "machine": machine_info(),
        "demo_run": str(demo_run or ""),
        "reward_models": reward_models,
        "runs": [{**r, **curve_summary(r["evaluations"])} for r in runs],
    }


# ---------------------------------------------------------------------------------------------------------
# Reading the curves
# ---------------------------------------------------------------------------------------------------------


def window_means(values: list[float], window: int = WINDOW) -> list[float]:
    """Mean of each run of `window` consecutive values (fewer values: their one mean)."""
    window = min(window, len(values))
    return [statistics.fmean(values[i : i + window]) for i in range(len(values) - window + 1)]


def curve_summary(evaluations: list[dict], window: int = WINDOW) -> dict:
    """The gold curve at its peak (the best window of `window` evaluations, and the step it starts at) and at its
    end (the last window), the kept share end / peak (gains over the start would say the same of a curve that
    never rose), and the KL at the end."""
    gold = [row["gold_score"] for row in evaluations]
    means = window_means(gold, window)
    best = max(range(len(means)), key=means.__getitem__)
    end = means[-1]
    return {
        "gold_start": gold[0],
        "gold_peak": means[best],
        "peak_step": evaluations[best]["step"],
        "gold_end": end,
        "kept": end / means[best] if means[best] else float("nan"),
        "kl_end": window_means([row["kl"] for row in evaluations], window)[-1],
        "rm_end": window_means([row["rm_score"] for row in evaluations], window)[-1],
    }


def goal(result: dict) -> dict:
    """Per variant: mean kept share over seeds, and whether the goal holds (see the module's docstring)."""
    by_variant = {}
    for run in result["runs"]:
        by_variant.setdefault(run["variant"], []).append(run["kept"])
    kept = {variant: statistics.fmean(values) for variant, values in by_variant.items()}
    single = kept.get("single")
    fallen = single is not None and single < GOAL_FALLEN
    return {
        "kept": kept,
        "single_fell": fallen,
        "met_by": [v for v, share in kept.items() if v != "single" and share >= GOAL_KEPT and fallen],
    }


# ---------------------------------------------------------------------------------------------------------
# The table and the figure
# ---------------------------------------------------------------------------------------------------------


def _mean(values) -> str:
    values = [value for value in values if isinstance(value, (int, float))]
    if not values:
        return "-"
    spread = f" [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{spread}"


def markdown(result: dict, plot: str | None = None) -> str:
    s, machine = result["settings"], result["machine"]
    lines = [
        f"Measured by `python -m benchmarks.overoptimisation{' --smallest' if s['smallest'] else ''}` on "
        f"{machine['date']} ({machine['cpu']}, {machine['cpu_cores']} cores; gold scores do not depend on the "
        f"machine). Reward models: an ensemble of {s['k']} on the first {s['labels']} rankings of the demo's "
        f"labels, per seed; `single` is its member 0. PPO: kl_coef {s['kl_coef']}, {s['steps']} steps, held-out "
        f"evaluations every {s['eval_steps']} steps on {s['eval_prompts']} prompts; mean_minus_std λ = "
        f"{s['uncertainty_coef']}. Peak: the best mean of {WINDOW} consecutive evaluations; end: the last "
        f"{WINDOW}. Seeds {', '.join(map(str, s['seeds']))}.",
        "",
        "| reward | seed | gold at start | gold at peak (step) | gold at end | end / peak | KL at end | RM at end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in s["variants"]:
        for run in (r for r in result["runs"] if r["variant"] == variant):
            lines.append(
                f"| {variant} | {run['seed']} | {run['gold_start']:.3f} | {run['gold_peak']:.3f} "
                f"({run['peak_step']}) | {run['gold_end']:.3f} | {run['kept']:.3f} | {run['kl_end']:.2f} | "
                f"{run['rm_end']:.3f} |"
            )
    lines += [
        "",
        "Means over seeds [min, max]:",
        "",
        "| reward | gold at peak | gold at end | end / peak | KL at end |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in s["variants"]:
        runs = [r for r in result["runs"] if r["variant"] == variant]
        lines.append(
            f"| {variant} | {_mean(r['gold_peak'] for r in runs)} | {_mean(r['gold_end'] for r in runs)} | "
            f"{_mean(r['kept'] for r in runs)} | {_mean(r['kl_end'] for r in runs)} |"
        )
    verdict = goal(result)
    single = verdict["kept"].get("single")
    if verdict["met_by"]:
        said = (
            f"Goal met by {', '.join(verdict['met_by'])}: the single reward model keeps {single:.1%} of its peak "
            f"on average, below {GOAL_FALLEN:.0%}, while {', '.join(verdict['met_by'])} keep >= {GOAL_KEPT:.0%}."
        )
    elif single is not None and not verdict["single_fell"]:
        said = (
            f"Goal not tested: the single reward model keeps {single:.1%} of its peak on average (it did not "
            f"fall below {GOAL_FALLEN:.0%})."
        )
    else:
        said = f"Goal not met: no aggregation keeps >= {GOAL_KEPT:.0%} of its peak on average."
    lines += ["", said]
    if plot:
        lines += ["", f"![Gold score by step and by KL](results/{plot})"]
    return "\n".join(lines)


def plot_curves(result: dict, path: Path) -> Path:
    """Held-out gold score against step and against KL: one colour per reward, one line per seed."""
    from rlhf import figures

    figure, axes = figures.figure(1, 2, size=(12, 4.5))
    colors = {"single": "tab:red", "mean": "tab:blue", "min": "tab:green", "mean_minus_std": "tab:purple"}
    for run in result["runs"]:
        rows = run["evaluations"]
        label = run["variant"] if run["seed"] == result["settings"]["seeds"][0] else None
        color = colors.get(run["variant"], "grey")
        axes[0][0].plot([r["step"] for r in rows], [r["gold_score"] for r in rows], color=color, alpha=0.7, label=label)
        axes[0][1].plot(
            [r["kl"] for r in rows], [r["gold_score"] for r in rows], ".-", color=color, alpha=0.6, label=label
        )
    axes[0][0].set(title="Held-out gold score by PPO step", xlabel="PPO step", ylabel="gold score")
    axes[0][1].set(
        title="Held-out gold score by KL from the SFT policy", xlabel="KL (nats / response)", ylabel="gold score"
    )
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return figures.save_png(figure, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-run", type=Path, help="a finished demo run (make demo): its SFT policy and labels")
    parser.add_argument("--smallest", action="store_true", help="tiny random models, a few steps: a smoke run")
    defaults = Settings()
    parser.add_argument("--seeds", type=int, nargs="+", default=defaults.seeds)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--k", type=int, default=defaults.k, help="ensemble members")
    parser.add_argument("--labels", type=int, default=defaults.labels, help="rankings the reward models train on")
    parser.add_argument("--kl-coef", type=float, default=defaults.kl_coef)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--eval-steps", type=int, default=defaults.eval_steps)
    parser.add_argument("--eval-prompts", type=int, default=defaults.eval_prompts)
    parser.add_argument("--uncertainty-coef", type=float, default=defaults.uncertainty_coef)
    parser.add_argument("--jobs", type=int, default=1, help="PPO runs at a time (each on OMP_NUM_THREADS threads)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "overoptimisation.json")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=REPO / "benchmarks",
        help="whose RESULTS.md gets the measured block (and results/ the figure)",
    )
    parser.add_argument("--workdir", type=Path, help="kept (runs, logs, models) instead of a temporary directory")
    args = parser.parse_args(argv)
    if not args.smallest and args.demo_run is None:
        parser.error("--demo-run RUN_DIR (a finished `make demo`) is needed, or --smallest")
    settings = (
        Settings.smoke()
        if args.smallest
        else Settings(
            seeds=args.seeds,
            variants=args.variants,
            k=args.k,
            labels=args.labels,
            kl_coef=args.kl_coef,
            steps=args.steps,
            eval_steps=args.eval_steps,
            eval_prompts=args.eval_prompts,
            uncertainty_coef=args.uncertainty_coef,
            jobs=args.jobs,
        )
    )

    def plotted_markdown(result: dict) -> str:
        (args.results_dir / "results").mkdir(parents=True, exist_ok=True)
        plot_curves(result, args.results_dir / "results" / PLOT)
        return markdown(result, PLOT)

    measure_and_record(
        lambda workdir: run(settings, workdir, args.demo_run, log=lambda line: print(line, flush=True)),
        plotted_markdown,
        block=BLOCK,
        out=args.out,
        results_dir=args.results_dir,
        workdir=args.workdir,
        prefix="bench-overopt-",
    )


if __name__ == "__main__":
    main()
