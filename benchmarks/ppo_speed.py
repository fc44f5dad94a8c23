"""PPO speed: iteration time split into its phases, and ZeRO-3 rollout generation with the actor's parameters
gathered once per rollout against gathered at every generated token (synced_gpus).

    python -m benchmarks.ppo_speed                                   # 1 process
    deepspeed --num_gpus 2 --module benchmarks.ppo_speed             # 2 processes (DS_ACCELERATOR=cpu: gloo)
    python -m benchmarks.ppo_speed --smoke                           # a few seconds

Models are built from config in a temporary directory (the demo's tokenizer and model shape: Llama, hidden 128,
3 layers), never downloaded. Phase times are the medians of the stage's own per-step metrics
(time_generation, time_scoring, time_training) over a short run of rlhf.stages.ppo with ZeRO-0 engines.
The generation comparison builds a ZeRO-3 actor engine and times `experience.generate` on the same prompts and
seed with each path, alternating, so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def build_inputs(root: Path, hidden_size: int, num_layers: int) -> dict:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhf.demo.task import DemoSettings, corpus_words, make_split
    from rlhf.demo.tiny_model import build_tiny_model

    policy = build_tiny_model(root / "policy", corpus_words(), hidden_size=hidden_size, num_layers=num_layers)
    config = json.loads((policy / "config.json").read_text())
    reward_config = LlamaConfig(**{k: v for k, v in config.items()
                                   if k not in ("architectures", "transformers_version", "dtype")})
    reward_config.num_labels = 1
    torch.manual_seed(1)
    LlamaForSequenceClassification(reward_config).save_pretrained(root / "reward")
    from rlhf.models import load_tokenizer

    load_tokenizer(str(policy)).save_pretrained(root / "reward")
    records = make_split(512, seed=5, settings=DemoSettings())
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records))
    return {"policy": str(policy), "reward": str(root / "reward"), "prompts": str(root / "prompts.jsonl")}


def stage_argv(paths: dict, output_dir: Path, steps: int, batch: int, max_new_tokens: int, zero: str) -> list[str]:
    ds = str(REPO / "deepspeed_configs" / zero)
    settings = dict(model_name_or_path=paths["policy"], critic_model=paths["reward"], reward_model=paths["reward"],
                    prompts_file=paths["prompts"], output_dir=str(output_dir), registry_dir=str(output_dir / "reg"),
                    max_steps=steps, rollout_batch_size=batch, minibatch_size=batch // 2, ppo_epochs=2,
                    max_new_tokens=max_new_tokens, save_steps=0, disable_tqdm="true", report_to="none",
                    actor_deepspeed=ds, critic_deepspeed=ds, reference_deepspeed=ds, reward_deepspeed=ds)
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def phase_times(paths: dict, work: Path, steps: int, batch: int, max_new_tokens: int) -> dict:
    """Median seconds per phase over a short PPO run (the first step, with its warm-up, left out)."""
    from rlhf.config import parse_config
    from rlhf.ppo.metrics import read_metrics
    from rlhf.stages.ppo import PPOStageConfig, run

    output_dir = work / "phases"
    run(parse_config(PPOStageConfig, stage_argv(paths, output_dir, steps, batch, max_new_tokens, "zero0.json")))
    rows = read_metrics(output_dir)[1:]
    medians = {key: statistics.median(row[key] for row in rows)
               for key in ("time_generation", "time_scoring", "time_training", "tokens_per_second")}
    medians["time_step"] = medians["time_generation"] + medians["time_scoring"] + medians["time_training"]
    return {key: round(value, 4) for key, value in medians.items()}


def generation_times(paths: dict, work: Path, batch: int, max_new_tokens: int, repeats: int) -> dict:
    """Seconds per rollout generation under ZeRO-3, per path, and whether both sampled the same tokens."""
    from rlhf import distributed
    from rlhf.config import parse_config
    from rlhf.ppo import experience, inputs as ppo_inputs
    from rlhf.ppo.engines import build_engines
    from rlhf.ppo.logprobs import sampling_settings_for
    from rlhf.stages.ppo import PPOStageConfig

    argv = stage_argv(paths, work / "zero3", 1, batch, max_new_tokens, "zero3.json")
    config = parse_config(PPOStageConfig, argv)
    inputs = ppo_inputs.resolve(config)
    engines = build_engines(config, inputs.paths, inputs.tokenizer)
    sampling = sampling_settings_for(inputs.tokenizer, 1.0, 0, 1.0, max_new_tokens)
    generation_config = sampling.generation_config(inputs.tokenizer)
    # Fixed length: every response runs to max_new_tokens, so both paths do the same amount of work.
    generation_config.min_new_tokens = max_new_tokens
    batch_prompts = experience.tokenize_prompts(inputs.tokenizer, inputs.prompts_for_step(0))
    seconds = {"gather_once": [], "per_step": []}
    tokens = {}
    for repeat in range(repeats + 1):
        for path in seconds:
            torch.manual_seed(1000 + repeat + distributed.global_rank())
            distributed.barrier()
            start = time.perf_counter()
            tokens[path] = experience.generate(engines.actor, batch_prompts, generation_config, path)
            distributed.barrier()
            if repeat:  # the first round warms up
                seconds[path].append(time.perf_counter() - start)
    same = torch.equal(tokens["gather_once"], tokens["per_step"])
    result = {f"{path}_s": round(statistics.median(values), 4) for path, values in seconds.items()}
    result["speedup"] = round(result["per_step_s"] / result["gather_once_s"], 2)
    result["same_tokens"] = same
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="PPO steps for the phase times")
    parser.add_argument("--batch", type=int, default=32, help="prompts per step per process")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed generations per path (median reported)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny settings, a few seconds")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.max_new_tokens, args.repeats, args.hidden_size, args.layers = 3, 8, 4, 1, 32, 1
    torch.set_num_threads(1)  # see benchmarks/kway_vs_pairs.py: one thread on a shared 2-core machine

    from rlhf import distributed
    from rlhf.ppo.engines import init_distributed

    init_distributed()
    world = distributed.world_size()
    # Every rank needs the same files: rank 0 builds them where the others can read (one machine).
    work = Path(os.environ.get("PPO_BENCH_DIR") or Path(tempfile.gettempdir()) / "ppo_speed_bench")
    if distributed.is_main_process():
        work.mkdir(parents=True, exist_ok=True)
        (work / "paths.json").write_text(json.dumps(build_inputs(work / "models", args.hidden_size, args.layers)))
    distributed.barrier()
    paths = json.loads((work / "paths.json").read_text())
    phases = phase_times(paths, work / f"world{world}", args.steps, args.batch, args.max_new_tokens)
    generation = generation_times(paths, work / f"world{world}", args.batch, args.max_new_tokens, args.repeats)
    if not distributed.is_main_process():
        return
    print("| processes | step s | generation s | scoring s | training s | tokens/s | ZeRO-3 gen, gathered once s "
          "| ZeRO-3 gen, per step s | speedup | same tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    print(f"| {world} | {phases['time_step']:.3f} | {phases['time_generation']:.3f} | {phases['time_scoring']:.3f} "
          f"| {phases['time_training']:.3f} | {phases['tokens_per_second']:.0f} | {generation['gather_once_s']:.3f} "
          f"| {generation['per_step_s']:.3f} | {generation['speedup']:.2f}x | {generation['same_tokens']} |")
    settings = {"processes": world, "steps": args.steps, "prompts_per_process": args.batch,
                "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "smoke": args.smoke,
                "model": f"Llama hidden {args.hidden_size}, {args.layers} layers, demo vocabulary",
                "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu",
                "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch_threads": torch.get_num_threads()}
    out = args.out or REPO / "benchmarks" / "results" / f"ppo_speed_{world}proc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "phases": phases, "zero3_generation": generation}, indent=2)
                   + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
