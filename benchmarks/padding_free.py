"""Padding-free PPO forwards against padded ones, in one process on the same rollouts, alternating.

The PPO stage is set up once (four ZeRO-0 engines on the benchmark's models) and samples one rollout per
repeat; then scoring and the update (`ppo_epochs` over its minibatches) run on that rollout padded and
padding-free, in alternating order. Both sides see the same tokens and the same weights' sizes, so the ratio
is the packing alone, free of the sampling noise in response lengths that separate runs have.

    python -m benchmarks.padding_free --hidden-size 1024 --num-layers 6 --repeats 4   # the 100M size
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import tiny_models
from benchmarks.common import RESULTS_DIR, median, ratio, write_json
from benchmarks.ppo_vs_trl import Settings, stage_arguments


def run(settings: Settings, workdir: Path, repeats: int, log=print) -> dict:
    import torch

    from rlhf.config import parse_config
    from rlhf.ppo import experience, update
    from rlhf.stages.ppo import PPORecipe, PPOStageConfig

    models = tiny_models.build(workdir / "models", tiny_models.TinySize(settings.hidden_size, settings.num_layers))
    config = parse_config(PPOStageConfig, stage_arguments(models, settings, workdir / "run", 0))
    recipe = PPORecipe(config)
    recipe.setup()
    engines, packed_rows = recipe.engines, dict(recipe.engines.row_tokens)
    times: dict[str, dict[str, list[float]]] = {side: {"scoring": [], "training": []} for side in ("packed", "padded")}
    shares = []
    for repeat in range(repeats + 1):  # the first is warm-up
        batch = experience.tokenize_prompts(recipe.tokenizer, recipe.inputs.prompts_for_step(repeat))
        response_ids = experience.generate(engines.actor, batch, recipe.generation_config, recipe.zero3_generation)
        order = ("packed", "padded") if repeat % 2 == 0 else ("padded", "packed")
        for side in order:
            engines.row_tokens = packed_rows if side == "packed" else dict.fromkeys(packed_rows)
            started = time.perf_counter()
            rollout = experience.score(
                engines,
                batch,
                response_ids,
                recipe.tokenizer,
                recipe.sampling,
                config.reward_max_length,
                config.scoring_batch_size,
            )
            scored = time.perf_counter()
            shaping = experience.RewardShaping(kl_coef=0.05, kl_estimator="k1")
            rollout, _ = experience.with_advantages(rollout, shaping, recipe.sampling.stop_token_ids, None)
            settings_for_side = dataclasses.replace(
                recipe.update_settings,
                actor_row_tokens=engines.row_tokens["actor"],
                critic_row_tokens=engines.row_tokens["critic"],
            )
            before_update = time.perf_counter()
            update.ppo_update(
                engines.actor,
                engines.critic,
                rollout,
                settings_for_side,
                torch.Generator().manual_seed(repeat),
                None,
                0,
                10,
            )
            trained = time.perf_counter()
            if repeat > 0:
                times[side]["scoring"].append(scored - started)
                times[side]["training"].append(trained - before_update)
        mask = torch.cat([batch.query_mask, rollout.response_mask.to(batch.query_mask.dtype)], dim=1)
        shares.append(mask.float().mean().item())
        log(f"padding_free: repeat {repeat}/{repeats}: real tokens {shares[-1]:.2f} of the padded batch")
    recipe.cleanup()
    summary = {side: {phase: median(values) for phase, values in phases.items()} for side, phases in times.items()}
    return {
        "settings": vars(settings),
        "model": models["model"],
        "parameters": models["parameters"],
        "repeats": repeats,
        "real_token_share": median(shares[1:]),
        "times": times,
        "medians": summary,
        "ratios": {
            phase: ratio(summary["packed"][phase], summary["padded"][phase]) for phase in ("scoring", "training")
        },
    }


def markdown(result: dict) -> str:
    medians = result["medians"]
    lines = [
        f"{result['model']}, {result['repeats']} rollouts, medians; real tokens "
        f"{result['real_token_share']:.2f} of the padded batch (median).",
        "",
        "| phase | padding-free (s) | padded (s) | padding-free / padded |",
        "|---|---:|---:|---:|",
    ]
    for phase in ("scoring", "training"):
        lines.append(
            f"| {phase} | {medians['packed'][phase]:.3f} | {medians['padded'][phase]:.3f} | "
            f"{result['ratios'][phase]:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    for name in ("hidden_size", "num_layers", "rollout_batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "padding_free.json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings(
        rollout_batch_size=args.rollout_batch_size,
        minibatch_size=args.minibatch_size,
        ppo_epochs=args.ppo_epochs,
        max_new_tokens=args.max_new_tokens,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
    )
    with tempfile.TemporaryDirectory(prefix="bench-padding-free-") as workdir:
        result = run(settings, Path(workdir), args.repeats)
    print(markdown(result))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
