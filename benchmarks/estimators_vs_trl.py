"""Critic-free PPO iteration time: ours (rloo, grpo) against TRL 1.16's own RLOOTrainer and GRPOTrainer, at ~100M.

Both sides train the same policy against the same reward model on the same prompts, with the same group size
(samples per prompt), rollout (completions per iteration), minibatch, epochs, response length, learning rate and
β, one process, float32, one thread. Ours runs as `python -m rlhf.stages.ppo` with advantage_estimator rloo or grpo
(three ZeRO-0 engines, no critic); TRL as benchmarks/peers/trl_group.py, in our environment. Runs alternate (ours
rloo, TRL RLOO, ours grpo, TRL GRPO, then again) and each run's first iteration is left out as warm-up. The goal
(issue 29): our iteration at most 0.7x theirs.

The KL goes where each method puts it, on both sides alike: RLOO's β·Σ KL in the sequence reward (TRL's RLOO does
the same), GRPO's β·k3 as a loss term (ours with kl_in_loss). The models, the tiny Llamas of
benchmarks/tiny_models.py, are shared with benchmarks/ppo_vs_trl.py, as are our side's stage arguments.

    python -m benchmarks.estimators_vs_trl              # Llama hidden 1024, 6 layers: 100.8M parameters per model
    python -m benchmarks.estimators_vs_trl --smallest   # the smoke run: tiny models, 2 iterations, 1 round
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import tiny_models
from benchmarks.common import REPO, RESULTS_DIR, machine_info, measure_and_record, ratio, read_json, run_child
from benchmarks.ppo_vs_trl import PHASES, run_ours, summarize

ESTIMATORS = ("rloo", "grpo")
GOAL = 0.7  # our iteration time over TRL's
BLOCK = "estimators_vs_trl"  # the measured block of benchmarks/RESULTS.md


@dataclass
class Settings:
    steps: int = 3  # iterations per run; the first is warm-up
    rounds: int = 2  # alternations of the four sides
    rollout_batch_size: int = 8  # completions per iteration
    samples_per_prompt: int = 4
    minibatch_size: int = 8
    ppo_epochs: int = 2
    max_new_tokens: int = 16
    learning_rate: float = 1e-5
    kl_coef: float = 0.05
    hidden_size: int = 1024
    num_layers: int = 6

    @classmethod
    def smallest(cls) -> Settings:
        return cls(
            steps=2,
            rounds=1,
            rollout_batch_size=4,
            samples_per_prompt=2,
            minibatch_size=4,
            ppo_epochs=1,
            max_new_tokens=4,
            hidden_size=32,
            num_layers=1,
        )


def ours_settings(estimator: str, settings: Settings) -> dict:
    """Our stage keys beyond benchmarks.ppo_vs_trl's: the estimator, the group, and the KL where TRL puts it."""
    # No missing-EOS penalty: TRL's trainers have none, and it changes nothing that is timed.
    return {
        "advantage_estimator": estimator,
        "samples_per_prompt": settings.samples_per_prompt,
        "kl_in_loss": estimator == "grpo",
        "missing_eos_penalty": 0.0,
    }


def run_trl(estimator: str, models: dict, settings: Settings, workdir: Path, index: int) -> list[dict]:
    out = workdir / f"trl-{estimator}-{index}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.peers.trl_group",
        "--trainer",
        estimator,
        "--policy",
        models["policy"],
        "--reward",
        models["reward"],
        "--prompts",
        models["prompts"],
        "--steps",
        str(settings.steps),
        "--rollout-batch-size",
        str(settings.rollout_batch_size),
        "--samples-per-prompt",
        str(settings.samples_per_prompt),
        "--minibatch-size",
        str(settings.minibatch_size),
        "--ppo-epochs",
        str(settings.ppo_epochs),
        "--max-new-tokens",
        str(settings.max_new_tokens),
        "--learning-rate",
        str(settings.learning_rate),
        "--kl-coef",
        str(settings.kl_coef),
        "--seed",
        str(index),
        "--out",
        str(out),
    ]
    run_child(command, workdir / f"trl-{estimator}-{index}.log")
    return read_json(out)


def run(settings: Settings, workdir: Path, log=print) -> dict:
    models = tiny_models.build(workdir / "models", tiny_models.TinySize(settings.hidden_size, settings.num_layers))
    ours_rows = {estimator: [] for estimator in ESTIMATORS}
    trl_rows = {estimator: [] for estimator in ESTIMATORS}
    trl_versions = None
    for index in range(settings.rounds):
        for estimator in ESTIMATORS:
            log(f"estimators_vs_trl: round {index + 1}/{settings.rounds}: ours, {estimator}")
            ours_rows[estimator] += run_ours(
                models, settings, workdir, index, name=f"ours-{estimator}-{index}", **ours_settings(estimator, settings)
            )
            log(f"estimators_vs_trl: round {index + 1}/{settings.rounds}: TRL, {estimator}")
            result = run_trl(estimator, models, settings, workdir, index)
            trl_rows[estimator] += result["steps"]
            trl_versions = result["versions"]
    sides = {}
    for estimator in ESTIMATORS:
        ours, theirs = summarize(ours_rows[estimator]), summarize(trl_rows[estimator])
        ratios = {phase: ratio(ours[phase], theirs[phase]) for phase in (*PHASES, "time_iteration")}
        sides[estimator] = {
            "ours": ours,
            "trl": theirs,
            "ours_steps": ours_rows[estimator],
            "trl_steps": trl_rows[estimator],
            "ratios": ratios,
        }
    return {
        "settings": asdict(settings),
        "model": models["model"],
        "parameters": models["parameters"],
        "machine": machine_info(),
        "trl_versions": trl_versions,
        "estimators": sides,
        "goal": GOAL,
    }


def markdown(result: dict) -> str:
    s, machine = result["settings"], result["machine"]
    lines = [
        f"Measured by `python -m benchmarks.estimators_vs_trl` on {machine['date']}: {machine['cpu']}, "
        f"{machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}; TRL {result['trl_versions']['trl']}.",
        "",
        f"{result['model']} ({result['parameters']['policy'] / 1e6:.1f}M parameters per model); "
        f"{s['rollout_batch_size']} completions per iteration, {s['samples_per_prompt']} per prompt, minibatch "
        f"{s['minibatch_size']}, {s['ppo_epochs']} epochs, {s['max_new_tokens']} new tokens, β {s['kl_coef']}; "
        f"medians over {s['steps'] - 1} iterations after warm-up x {s['rounds']} alternating runs per side.",
        "",
        "| estimator | phase | ours (s) | TRL (s) | ours / TRL |",
        "|---|---|---:|---:|---:|",
    ]
    for estimator, side in result["estimators"].items():
        trainer = {"rloo": "RLOOTrainer", "grpo": "GRPOTrainer"}[estimator]
        for phase in (*PHASES, "time_iteration"):
            lines.append(
                f"| {estimator} vs {trainer} | {phase.replace('time_', '')} | {side['ours'][phase]:.3f} | "
                f"{side['trl'][phase]:.3f} | {side['ratios'][phase]:.2f} |"
            )
        lines.append(
            f"| {estimator} vs {trainer} | mean response tokens | {side['ours']['response_length']:.1f} | "
            f"{side['trl']['response_length']:.1f} | |"
        )
    verdicts = [
        f"{estimator} {side['ratios']['time_iteration']:.2f}x "
        f"({'met' if side['ratios']['time_iteration'] <= result['goal'] else 'not met'})"
        for estimator, side in result["estimators"].items()
    ]
    lines += ["", f"Goal: our iteration <= {result['goal']}x TRL's: {'; '.join(verdicts)}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true", help="tiny models, 2 iterations, 1 round: a smoke run")
    defaults = Settings()
    for name in (
        "hidden_size",
        "num_layers",
        "steps",
        "rounds",
        "rollout_batch_size",
        "samples_per_prompt",
        "minibatch_size",
        "ppo_epochs",
        "max_new_tokens",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "estimators_vs_trl.json")
    parser.add_argument(
        "--results-dir", type=Path, default=REPO / "benchmarks", help="whose RESULTS.md gets the measured block"
    )
    parser.add_argument("--workdir", type=Path, help="kept (models reused) instead of a temporary directory")
    args = parser.parse_args(argv)
    settings = (
        Settings.smallest()
        if args.smallest
        else Settings(
            **{
                name: getattr(args, name)
                for name in (
                    "hidden_size",
                    "num_layers",
                    "steps",
                    "rounds",
                    "rollout_batch_size",
                    "samples_per_prompt",
                    "minibatch_size",
                    "ppo_epochs",
                    "max_new_tokens",
                )
            }
        )
    )
    measure_and_record(
        lambda workdir: run(settings, workdir),
        markdown,
        block=BLOCK,
        out=args.out,
        results_dir=args.results_dir,
        workdir=args.workdir,
        prefix="bench-est-trl-",
    )


if __name__ == "__main__":
    main()
