"""Rollout generation under ZeRO-3 on 2 processes: the actor gathered once per rollout, against gathering
every layer again at every new token (synced_gpus), against an unsharded (ZeRO-0) actor.

The driver launches `deepspeed --num_gpus 2 --module benchmarks.zero3_generation --worker ...` (gloo on CPU).
Each worker wraps the same policy in a ZeRO-0 and a ZeRO-3 engine and times `rlhf.ppo.experience.generate`,
the PPO stage's own rollout call, in the three modes in turn, `repeats` times, the slowest rank counting.
Every response is forced to the full length (min_new_tokens), so all modes generate the same tokens.

    python -m benchmarks.zero3_generation [--smallest]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from benchmarks import tiny_models
from benchmarks.common import RESULTS_DIR, deepspeed_command, median, read_json, run_child, write_json

MODES = ("unsharded", "gather_once", "per_step")


@dataclass
class Settings:
    prompts_per_rank: int = 8
    max_new_tokens: int = 32
    repeats: int = 5
    hidden_size: int = 128
    num_layers: int = 4
    num_processes: int = 2

    @classmethod
    def smallest(cls) -> Settings:
        return cls(prompts_per_rank=2, max_new_tokens=4, repeats=1, hidden_size=32, num_layers=1)


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from rlhf import distributed
    from rlhf.models import load_tokenizer, partitioned_loading
    from rlhf.ppo.engines import _trained_engine, engine_config, init_distributed
    from rlhf.ppo.experience import generate, tokenize_prompts
    from rlhf.ppo.logprobs import sampling_settings_for

    settings = Settings(**json.loads(args.settings))
    models = read_json(Path(args.models))
    init_distributed()
    torch.manual_seed(distributed.global_rank())
    tokenizer = load_tokenizer(models["policy"])
    prompts = [json.loads(line)["prompt"] for line in Path(models["prompts"]).read_text().splitlines()]
    start = distributed.global_rank() * settings.prompts_per_rank
    batch = tokenize_prompts(tokenizer, prompts[start : start + settings.prompts_per_rank])
    generation_config = sampling_settings_for(tokenizer, 1.0, 0, 1.0, settings.max_new_tokens).generation_config(
        tokenizer
    )
    generation_config.min_new_tokens = settings.max_new_tokens

    stage = SimpleNamespace(
        minibatch_size=settings.prompts_per_rank,
        max_grad_norm=1.0,
        weight_decay=0.0,
        bf16=False,
        lr_scheduler_type="constant",
        warmup_steps=0,
        steps=1,
        updates_per_step=1,
    )
    hidden = settings.hidden_size

    def engine_from(config_path: str):
        ds_config = engine_config(config_path, stage, hidden, trained=True)
        with partitioned_loading(ds_config):
            model = AutoModelForCausalLM.from_pretrained(models["policy"])
        return _trained_engine(model, ds_config, 1e-5, stage)

    engines = {
        "unsharded": engine_from("deepspeed_configs/zero0.json"),
        "zero3": engine_from("deepspeed_configs/zero3.json"),
    }
    for engine in engines.values():
        engine.module.eval()
    seconds = {mode: [] for mode in MODES}
    for repeat in range(settings.repeats + 1):  # the first round is warm-up
        for mode in MODES:
            engine = engines["unsharded" if mode == "unsharded" else "zero3"]
            dist.barrier()
            began = time.perf_counter()
            responses = generate(engine, batch, generation_config, mode if mode != "unsharded" else "gather_once")
            elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a rollout is done when the slowest rank is
            assert responses.shape[1] == settings.max_new_tokens
            if repeat > 0:
                seconds[mode].append(elapsed.item())
    # Where a ZeRO-3 rollout's time goes, against the unsharded one: one more rollout of each under cProfile
    # (every rank runs it, since the gathers are collective; rank 0's profile is kept).
    profiles = {}
    for mode in MODES:
        engine = engines["unsharded" if mode == "unsharded" else "zero3"]
        path = mode if mode != "unsharded" else "gather_once"
        dist.barrier()
        profiles[mode] = profile_call(lambda engine=engine, path=path: generate(engine, batch, generation_config, path))
    if distributed.is_main_process():
        Path(args.out).write_text(json.dumps({"seconds": seconds, "profiles": profiles}))
    dist.barrier()


def profile_call(function, top: int = 12) -> dict:
    """cProfile of one call: total seconds and the functions with the most time of their own."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    function()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (calls, _, own, cumulative, _) in stats.stats.items():
        where = filename.split("site-packages/")[-1] if "site-packages/" in filename else filename
        rows.append({"function": f"{where}:{line}({name})", "calls": calls, "own_s": own, "cumulative_s": cumulative})
    rows.sort(key=lambda row: row["own_s"], reverse=True)
    by_library: dict[str, float] = {}
    for row in rows:
        library = next(
            (name for name in ("deepspeed", "transformers", "torch") if f"{name}/" in row["function"]),
            "builtins (torch ops)" if row["function"].startswith("~") else "other Python",
        )
        by_library[library] = by_library.get(library, 0.0) + row["own_s"]
    return {
        "total_s": stats.total_tt,
        "calls": sum(r["calls"] for r in rows),
        "own_s_by_library": by_library,
        "top": rows[:top],
    }


def run(settings: Settings, workdir: Path, log=print) -> dict:
    models = tiny_models.build(
        workdir / "models-zero3", tiny_models.TinySize(settings.hidden_size, settings.num_layers, 4)
    )
    (workdir / "models-zero3.json").write_text(json.dumps(models))
    out = workdir / "zero3_generation_worker.json"
    log(f"zero3_generation: {settings.num_processes} processes")
    run_child(
        deepspeed_command(
            "benchmarks.zero3_generation",
            [
                "--worker",
                "--settings",
                json.dumps(asdict(settings)),
                "--models",
                str(workdir / "models-zero3.json"),
                "--out",
                str(out),
            ],
            settings.num_processes,
        ),
        workdir / "zero3_generation.log",
    )
    measured = read_json(out)
    seconds = measured["seconds"]
    tokens = settings.prompts_per_rank * settings.num_processes * settings.max_new_tokens
    rows = []
    for mode in MODES:
        rollout = median(seconds[mode])
        rows.append({"mode": mode, "rollout_s": rollout, "tokens_per_s": tokens / rollout, "seconds": seconds[mode]})
    unsharded = rows[0]["rollout_s"]
    for row in rows:
        row["relative_to_unsharded"] = row["rollout_s"] / unsharded
    gather_once = rows[1]["rollout_s"]
    return {
        "settings": asdict(settings),
        "model": models["model"],
        "parameters": models["parameters"]["policy"],
        "rows": rows,
        "per_step_over_gather_once": rows[2]["rollout_s"] / gather_once,
        "profiles": measured["profiles"],
    }


def markdown(result: dict) -> str:
    labels = {
        "unsharded": "unsharded (ZeRO-0)",
        "gather_once": "ZeRO-3, gathered once per rollout",
        "per_step": "ZeRO-3, gathered per step (synced_gpus)",
    }
    lines = ["| actor | rollout (s) | tokens/s | time vs unsharded |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(
            f"| {labels[row['mode']]} | {row['rollout_s']:.3f} | {row['tokens_per_s']:.0f} | "
            f"{row['relative_to_unsharded']:.2f}x |"
        )
    profiles = result.get("profiles")
    if profiles:
        lines += [
            "",
            "Profile of one rollout each (cProfile, rank 0): seconds of own time by library.",
            "",
            "| library | " + " | ".join(labels[mode] for mode in MODES) + " |",
            "|---|" + "---:|" * len(MODES),
        ]
        libraries = sorted(
            {name for mode in MODES for name in profiles[mode]["own_s_by_library"]},
            key=lambda name: -profiles["per_step"]["own_s_by_library"].get(name, 0.0),
        )
        for library in libraries:
            lines.append(
                f"| {library} | "
                + " | ".join(f"{profiles[mode]['own_s_by_library'].get(library, 0.0):.3f}" for mode in MODES)
                + " |"
            )
        lines.append("| Python calls | " + " | ".join(str(profiles[mode]["calls"]) for mode in MODES) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "zero3_generation.json")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    settings = Settings.smallest() if args.smallest else Settings()
    with tempfile.TemporaryDirectory(prefix="bench-zero3-") as workdir:
        result = run(settings, Path(workdir))
    print(markdown(result))
    write_json(args.out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
