"""PPO iteration time and its phases, ours against TRL 1.0.0's PPOTrainer, on the same tiny models and prompts.

Both sides train the same policy against the same reward model (also the critic's start) with the same rollout
batch, minibatch, PPO epochs and response length, one process on CPU, float32, one thread. Ours runs as
`python -m rlhf.stages.ppo` (four ZeRO-0 DeepSpeed engines, the single-process default) and reports its phase
times in ppo_metrics.jsonl; TRL runs in its own venv as benchmarks/peers/trl_ppo.py. Runs alternate
(ours, TRL, ours, TRL, ...) and the first step of every run is left out as warm-up. Training FLOPs are
counted as 6 x trained parameters (actor + critic) x tokens (prompt + response) x PPO epochs.

    python -m benchmarks.ppo_vs_trl [--smallest] [--no-peer]
    python -m benchmarks.ppo_vs_trl --hidden-size 1024 --num-layers 6 --steps 3 --rounds 2   # the 100M size

`--padded-too` adds a third side to every round: ours with `padding_free: false`, the baseline that shows what
leaving the padding out of the forwards is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from benchmarks import tiny_models
from benchmarks.common import RESULTS_DIR, child_env, median, ratio, read_json, run_child, write_json
from rlhf.config import settings_to_argv

PHASES = ("time_generation", "time_scoring", "time_training")


@dataclass
class Settings:
    steps: int = 4  # per run; the first is warm-up
    rounds: int = 3  # ours/TRL alternations
    rollout_batch_size: int = 16
    minibatch_size: int = 16  # = rollout: TRL takes one optimiser step per rollout epoch whatever its minibatches
    ppo_epochs: int = 2
    max_new_tokens: int = 16
    learning_rate: float = 1e-5
    kl_coef: float = 0.05
    hidden_size: int = 64
    num_layers: int = 2
    padded_too: bool = False  # ours also with padding_free false, in every round

    @classmethod
    def smallest(cls) -> Settings:
        return cls(
            steps=2,
            rounds=1,
            rollout_batch_size=4,
            minibatch_size=4,
            ppo_epochs=1,
            max_new_tokens=4,
            hidden_size=32,
            num_layers=1,
        )


def run_ours(
    models: dict,
    settings: Settings,
    workdir: Path,
    index: int,
    padding_free: bool = True,
    name: str | None = None,
    **extra,
) -> list[dict]:
    """Our stage's metric rows of one run; `extra` overrides stage keys (e.g. advantage_estimator)."""
    name = name or (f"ours-{index}" if padding_free else f"ours-padded-{index}")
    output_dir = workdir / name
    arguments = stage_arguments(models, settings, output_dir, index, padding_free, **extra)
    run_child([sys.executable, "-m", "rlhf.stages.ppo", *arguments], workdir / f"{name}.log")
    return [json.loads(line) for line in (output_dir / "ppo_metrics.jsonl").read_text().splitlines() if line]


def stage_arguments(
    models: dict, settings: Settings, output_dir: Path, index, padding_free: bool = True, **extra
) -> list[str]:
    zero0 = "deepspeed_configs/zero0.json"
    arguments = {
        "model_name_or_path": models["policy"],
        "critic_model": models["reward"],
        "reward_model": models["reward"],
        "prompts_file": models["prompts"],
        "output_dir": output_dir,
        "registry_dir": output_dir.parent / "registry",
        "max_new_tokens": settings.max_new_tokens,
        "max_steps": settings.steps,
        "rollout_batch_size": settings.rollout_batch_size,
        "minibatch_size": settings.minibatch_size,
        "ppo_epochs": settings.ppo_epochs,
        "actor_learning_rate": settings.learning_rate,
        "critic_learning_rate": settings.learning_rate,
        "kl_coef": settings.kl_coef,
        "save_steps": 0,
        "disable_tqdm": "true",
        "report_to": "none",
        "seed": index if isinstance(index, int) else 0,
        "register_as": f"bench-ppo-{index}",
        "padding_free": str(padding_free).lower(),
        "actor_deepspeed": zero0,
        "critic_deepspeed": zero0,
        "reference_deepspeed": zero0,
        "reward_deepspeed": zero0,
        **extra,
    }
    return settings_to_argv(arguments)


# Where our training phase's time goes: the stage run once more with ppo_update under cProfile (the first
# update, with its warm-up, left out), totals of the calls that make up a PPO update.
TRAINING_PARTS = {
    "forward (actor, critic)": ("deepspeed/runtime/engine.py", "forward"),
    "backward (autograd)": ("torch/autograd/__init__.py", "backward"),
    "optimizer step (AdamW)": ("torch/optim/optimizer.py", "wrapper"),
    "gradient clipping (DeepSpeed)": ("deepspeed/runtime/utils.py", "clip_grad_norm_"),
    "gradient all-reduce (DeepSpeed)": ("deepspeed/runtime/engine.py", "allreduce_gradients"),
}


def profile_training_worker(argv: list[str], out: Path) -> None:
    import cProfile
    import pstats

    from rlhf.config import parse_config
    from rlhf.ppo import update
    from rlhf.stages.ppo import PPOStageConfig, run

    profiler = cProfile.Profile()
    original = update.ppo_update
    calls = []

    def profiled(*positional, **keywords):
        calls.append(1)
        if len(calls) == 1:
            return original(*positional, **keywords)
        profiler.enable()
        try:
            return original(*positional, **keywords)
        finally:
            profiler.disable()

    update.ppo_update = profiled
    config = parse_config(PPOStageConfig, argv)
    run(config)
    stats = pstats.Stats(profiler).stats
    updates = max(len(calls) - 1, 1)
    parts = {}
    for label, (path, name) in TRAINING_PARTS.items():
        parts[label] = (
            sum(
                cumulative
                for (filename, _, function), (_, _, _, cumulative, _) in stats.items()
                if filename.endswith(path) and function == name
            )
            / updates
        )
    total = (
        sum(
            cumulative
            for (filename, _, function), (_, _, _, cumulative, _) in stats.items()
            if filename.endswith("rlhf/ppo/update.py") and function == "ppo_update"
        )
        / updates
    )
    out.write_text(
        json.dumps(
            {"update_s": total, "parts_s": parts, "updates": updates, "generation_control": generation_control(config)}
        )
    )


def generation_control(config, repeats: int = 10) -> dict:
    """Our rollout call against TRL 1.0.0's, in one process on the same model and prompts, alternating.

    TRL's side re-creates its `generate` helper (trl/experimental/ppo/ppo_trainer.py): Hugging Face `generate`
    with return_dict_in_generate and output_scores, the per-token logits stacked (it keeps them for the log-probs).
    Both are made to sample exactly max_new_tokens tokens (min_new_tokens), so that both do the same work.
    """
    import time

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rlhf.data.prompts import load_prompts
    from rlhf.models import load_tokenizer
    from rlhf.ppo.data import prompts_for_step
    from rlhf.ppo.experience import generate, tokenize_prompts
    from rlhf.ppo.logprobs import sampling_settings_for

    tokenizer = load_tokenizer(config.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path).eval()
    prompts = prompts_for_step(load_prompts(config.prompts_file), 0, config.rollout_batch_size, 1, 0, config.seed)
    batch = tokenize_prompts(tokenizer, prompts)
    ours_config = sampling_settings_for(
        tokenizer, config.temperature, config.top_k, config.top_p, config.max_new_tokens
    ).generation_config(tokenizer)
    ours_config.min_new_tokens = config.max_new_tokens
    trl_config = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=1.0 + 1e-7,
        top_k=0.0,
        top_p=1.0,
        do_sample=True,
        min_new_tokens=config.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    unsharded = SimpleNamespace(module=model, device=torch.device("cpu"), zero_optimization_stage=lambda: 0)

    def ours():
        generate(unsharded, batch, ours_config, "gather_once")

    @torch.no_grad()
    def trl():
        queries = batch.query_ids
        output = model.generate(
            input_ids=queries,
            attention_mask=batch.query_mask,
            generation_config=trl_config,
            return_dict_in_generate=True,
            output_scores=True,
        )
        torch.stack(output.scores, 1)
        torch.cat((queries, output.sequences[:, queries.shape[1] :]), dim=1)

    seconds = {"ours": [], "trl": []}
    for repeat in range(repeats + 1):  # the first round is warm-up
        for name, function in (("ours", ours), ("trl", trl)):
            began = time.perf_counter()
            function()
            if repeat:
                seconds[name].append(time.perf_counter() - began)
    ours_s, trl_s = median(seconds["ours"]), median(seconds["trl"])
    return {
        "ours_s": ours_s,
        "trl_s": trl_s,
        "ratio": ours_s / trl_s,
        "repeats": repeats,
        "tokens": config.max_new_tokens * len(prompts),
    }


def profile_ours(models: dict, settings: Settings, workdir: Path) -> dict:
    out = workdir / "ours-training-profile.json"
    argv = stage_arguments(models, settings, workdir / "ours-profile", "profile")
    run_child(
        [sys.executable, "-m", "benchmarks.ppo_vs_trl", "--profile-training", str(out), "--", *argv],
        workdir / "ours-profile.log",
    )
    return read_json(out)


def run_trl(python: Path, models: dict, settings: Settings, workdir: Path, index: int) -> dict:
    out = workdir / f"trl-{index}.json"
    command = [
        str(python),
        str(Path(__file__).parent / "peers" / "trl_ppo.py"),
        "--policy",
        models["policy"],
        "--reward",
        models["reward"],
        "--prompt-ids",
        models["prompt_ids"],
        "--steps",
        str(settings.steps),
        "--rollout-batch-size",
        str(settings.rollout_batch_size),
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
    # The peer's venv must not see our repository's packages (or our TRL) on its path.
    env = child_env()
    env.pop("PYTHONPATH", None)
    run_child(command, workdir / f"trl-{index}.log", env=env)
    return read_json(out)


def summarize(rows: list[dict]) -> dict:
    """Median of each phase over the timed steps (all but each run's first), and their sum."""
    timed = [row for row in rows if row["step"] > 1] or rows
    summary = {phase: median([row[phase] for row in timed]) for phase in PHASES}
    summary["time_iteration"] = sum(summary[phase] for phase in PHASES)
    summary["response_length"] = statistics.fmean(row["response_length"] for row in timed)
    summary["tokens_per_second"] = median([row["tokens_per_second"] for row in timed])
    summary["timed_steps"] = len(timed)
    if all("time_gc_collect" in row for row in timed):
        summary["time_gc_collect"] = median([row["time_gc_collect"] for row in timed])
    return summary


def training_flops(models: dict, settings: Settings, response_length: float) -> float:
    """6 x trained parameters x tokens of one PPO step's training phase (actor and critic, every epoch)."""
    prompt_ids = read_json(Path(models["prompt_ids"]))
    prompt_length = max(len(ids) for ids in prompt_ids)  # left-padded to the batch's longest
    tokens = settings.rollout_batch_size * (prompt_length + response_length) * settings.ppo_epochs
    trained = models["parameters"]["policy"] + models["parameters"]["reward"]
    return 6 * trained * tokens


def run(
    settings: Settings,
    workdir: Path,
    peer: bool = True,
    peak_flops: float | None = None,
    log=print,
    profile: bool = True,
) -> dict:
    models = tiny_models.build(workdir / "models", tiny_models.TinySize(settings.hidden_size, settings.num_layers))
    python = None
    note = None
    if peer:
        from benchmarks.peers import trl_venv

        python = trl_venv.ensure(log)
    else:
        note = "TRL peer not run (--no-peer)"
    ours_rows, padded_rows, trl_rows, trl_versions = [], [], [], None
    for index in range(settings.rounds):
        log(f"ppo_vs_trl: round {index + 1}/{settings.rounds}: ours")
        ours_rows += run_ours(models, settings, workdir, index)
        if settings.padded_too:
            log(f"ppo_vs_trl: round {index + 1}/{settings.rounds}: ours, padded")
            padded_rows += run_ours(models, settings, workdir, index, padding_free=False)
        if python is not None:
            log(f"ppo_vs_trl: round {index + 1}/{settings.rounds}: TRL")
            result = run_trl(python, models, settings, workdir, index)
            trl_rows += result["steps"]
            trl_versions = result["versions"]
    ours = summarize(ours_rows)
    flops = training_flops(models, settings, ours["response_length"])
    ours["training_flops_per_step"] = flops
    ours["training_flops_per_second"] = flops / ours["time_training"]
    if peak_flops:
        ours["training_share_of_matmul_peak"] = ours["training_flops_per_second"] / peak_flops
    result = {
        "settings": asdict(settings),
        "model": models["model"],
        "parameters": models["parameters"],
        "ours": ours,
        "ours_steps": ours_rows,
        "note": note,
        "flops_formula": "6 x (actor + critic parameters) x (prompt + response tokens) x rollout x epochs",
    }
    if padded_rows:
        padded = summarize(padded_rows)
        result.update(
            ours_padded=padded,
            ours_padded_steps=padded_rows,
            padding_free_ratios={phase: ratio(ours[phase], padded[phase]) for phase in (*PHASES, "time_iteration")},
        )
    if trl_rows:
        theirs = summarize(trl_rows)
        result.update(
            trl=theirs,
            trl_steps=trl_rows,
            trl_versions=trl_versions,
            ratios={phase: ratio(ours[phase], theirs[phase]) for phase in (*PHASES, "time_iteration")},
        )
    if profile:
        log("ppo_vs_trl: profiling our training phase")
        result["ours_training_profile"] = profile_ours(models, settings, workdir)
    return result


def markdown(result: dict) -> str:
    ours, theirs = result["ours"], result.get("trl")
    lines = ["| phase | ours (s) | TRL 1.0.0 (s) | ours / TRL |", "|---|---:|---:|---:|"]
    for phase in (*PHASES, "time_iteration"):
        label = phase.replace("time_", "")
        if theirs:
            lines.append(f"| {label} | {ours[phase]:.3f} | {theirs[phase]:.3f} | {result['ratios'][phase]:.2f} |")
        else:
            lines.append(f"| {label} | {ours[phase]:.3f} | not run | - |")
    length = f"{ours['response_length']:.1f}" + (f" / {theirs['response_length']:.1f}" if theirs else "")
    lines.append(f"| mean response tokens (ours / TRL) | {length} | | |")
    padded = result.get("ours_padded")
    if padded:
        lines.append("\n| phase | ours, padding-free (s) | ours, padded (s) | padding-free / padded |")
        lines.append("|---|---:|---:|---:|")
        for phase in (*PHASES, "time_iteration"):
            lines.append(
                f"| {phase.replace('time_', '')} | {ours[phase]:.3f} | {padded[phase]:.3f} | "
                f"{result['padding_free_ratios'][phase]:.2f} |"
            )
    if theirs and "time_gc_collect" in theirs:
        lines.append(
            f"\nTRL's two `gc.collect()` calls per iteration take {theirs['time_gc_collect']:.3f} s "
            f"(in all; the one in scoring is counted above, the one after the step's end is not)."
        )
    profile = result.get("ours_training_profile")
    if profile:
        parts = "; ".join(
            f"{label} {1000 * profile['parts_s'][label]:.0f} ms"
            for label in TRAINING_PARTS
            if label in profile["parts_s"]
        )
        lines.append(
            f"\nProfile of our training phase (cProfile, {profile['updates']} updates): "
            f"{1000 * profile['update_s']:.0f} ms per update: {parts}."
        )
        control = profile.get("generation_control")
        if control:
            lines.append(
                f"\nGeneration head to head in one process (same model and prompts, {control['tokens']} "
                f"tokens, median of {control['repeats']} alternating): ours {1000 * control['ours_s']:.1f} ms, "
                f"TRL's call {1000 * control['trl_s']:.1f} ms, ours / TRL {control['ratio']:.2f}."
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true")
    parser.add_argument("--no-peer", action="store_true", help="skip TRL (and creating its venv)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ppo_vs_trl.json")
    parser.add_argument("--profile-training", type=Path, help=argparse.SUPPRESS)
    defaults = Settings()
    for name in (
        "hidden_size",
        "num_layers",
        "steps",
        "rounds",
        "rollout_batch_size",
        "minibatch_size",
        "ppo_epochs",
        "max_new_tokens",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of our training phase")
    parser.add_argument("--padded-too", action="store_true", help="also run ours with padding_free false")
    parser.add_argument("--workdir", type=Path, help="kept (models reused) instead of a temporary directory")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--profile-training" in argv:
        split = argv.index("--")
        profile_training_worker(argv[split + 1 :], Path(argv[argv.index("--profile-training") + 1]))
        return
    args = parser.parse_args(argv)
    settings = (
        Settings.smallest()
        if args.smallest
        else Settings(
            steps=args.steps,
            rounds=args.rounds,
            rollout_batch_size=args.rollout_batch_size,
            minibatch_size=args.minibatch_size,
            ppo_epochs=args.ppo_epochs,
            max_new_tokens=args.max_new_tokens,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            padded_too=args.padded_too,
        )
    )
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ppo-")))
        result = run(settings, workdir, peer=not args.no_peer, profile=not args.no_profile)
    print(markdown(result))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
