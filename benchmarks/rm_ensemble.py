"""Reward-model ensembles: k separate models, or k scalar heads on one shared body? Disagreement per cost.

Both are trained on the demo's rankings with the demo's RM settings (its resolved config), from the same SFT policy:

- **models**: the RM stage with `ensemble_size: k` (what the library does): k whole trainings, seeds seed..seed+k-1,
  so that each member's new head starts elsewhere and sees the rankings in its own order;
- **heads**: one training of one body under k scalar heads (a sequence-classification head with k outputs, each
  row its own random start), each head's loss weighted by its own bootstrap of the rankings (Poisson(1) weights per
  ranking, fixed for the run, as in bootstrapped DQN, Osband et al. 2016), the body learning from their sum. One
  data order: the body is shared. This design lives here only, to be measured.

Each member (head) is normalised as the library normalises a member: its mean reward on the SFT demonstrations is 0.
On the held-out rankings each design gives its members' mean's pairwise accuracy, each member's, and the
disagreement: the members' (population) std per response, averaged (`ensemble_std`), also as a share of how much the
mean tells responses apart (`ensemble_relative_std`, free of the reward scale), and whether the disagreement points
at errors (the mean's error rate in the least and most uncertain tenths of the pairs). The cost: parameters, body
forwards per response (training and PPO scoring), and the training time (indicative: the machine is shared).

    python -m benchmarks.rm_ensemble --demo-run runs/demo-run --k 4
    python -m benchmarks.rm_ensemble --smallest          # the smoke run: a tiny model, a few rankings
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import REPO, RESULTS_DIR, machine_info, measure_and_record, read_json, run_child, write_json
from rlhf.config import settings_to_argv

BLOCK = "rm_ensemble"  # the measured block of benchmarks/RESULTS.md


@dataclass
class Settings:
    k: int = 4
    seed: int = 0
    smallest: bool = False

    @classmethod
    def smoke(cls) -> Settings:
        return cls(k=2, smallest=True)


# ---------------------------------------------------------------------------------------------------------
# The stage arguments both designs share
# ---------------------------------------------------------------------------------------------------------


def shared_arguments(demo_run: Path | None, workdir: Path, settings: Settings) -> list[str]:
    """The RM stage's arguments for both designs: the demo's resolved RM config with its SFT model resolved, or
    (smallest) a tiny model on generated rankings; no checkpoints or evaluation during training, and one sequence
    per completion (the heads' loss reads every head's score from the plain forward)."""
    common = {
        "registry_dir": workdir / "registry",
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "shared_prompt_forward": "false",
        "seed": settings.seed,
        "disable_tqdm": "true",
    }
    if settings.smallest:
        return settings_to_argv({**smallest_inputs(workdir), **common})
    from rlhf.config import load_yaml
    from rlhf.registry import Registry, resolve_model
    from rlhf.run_files import RESOLVED_CONFIG

    resolved = demo_run / "rm" / RESOLVED_CONFIG
    if not resolved.is_file():
        raise SystemExit(f"{resolved} not found: --demo-run needs a finished demo run (make demo)")
    config = load_yaml(resolved)
    registry = Registry(REPO / config["registry_dir"]) if config.get("registry_dir") else Registry()
    model, parent = resolve_model(config["model_name_or_path"], registry)
    normalization = config.get("normalization_file") or (parent.config.get("train_file", "") if parent else "")
    return ["--config", str(resolved)] + settings_to_argv(
        {**common, "model_name_or_path": model, "normalization_file": normalization, "gold_scorer": ""}
    )


def smallest_inputs(workdir: Path) -> dict:
    """A tiny SFT model, 64 demo rankings of four responses ordered by the gold score, and demonstrations."""
    import random

    from rlhf.data.rankings import Ranking, ranks_from_scores, write_rankings
    from rlhf.demo.task import CHATTER, WORDS, corpus_words, correct_answer, gold_score, make_split, parse_prompt
    from rlhf.demo.tiny_model import build_tiny_model

    root = workdir / "smallest"
    model = build_tiny_model(root / "sft_model", corpus_words(), hidden_size=32, num_layers=1, num_heads=2)
    rng, rankings = random.Random(0), []
    for number, record in enumerate(make_split(64, seed=1)):
        answer = correct_answer(parse_prompt(record["prompt"]))
        responses = (
            " ".join(answer),
            f"{rng.choice(CHATTER)} {' '.join(answer)}",
            " ".join(answer + rng.sample(WORDS, 2)),
            " ".join(rng.sample(WORDS, 4)),
        )
        scores = [gold_score(record["prompt"], text) for text in responses]
        rankings.append(Ranking(f"r{number}", record["prompt"], responses, ranks_from_scores(scores), None))
    write_rankings(root / "rankings.jsonl", rankings)
    (root / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in make_split(16, seed=2)))
    return {
        "model_name_or_path": model,
        "train_file": root / "rankings.jsonl",
        "eval_fraction": 0.25,
        "normalization_file": root / "demos.jsonl",
        "max_length": 48,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "learning_rate": 2e-3,
        "logging_steps": 100,
        "eval_on_start": True,
    }  # as the demo's resolved config has it


# ---------------------------------------------------------------------------------------------------------
# Design (a): k separate models, the RM stage's ensemble
# ---------------------------------------------------------------------------------------------------------


def run_models(argv: list[str], settings: Settings, workdir: Path) -> dict:
    output_dir = workdir / "models"
    run_child(
        [
            sys.executable,
            "-m",
            "rlhf.stages.rm",
            *argv,
            "--ensemble_size",
            str(settings.k),
            "--output_dir",
            str(output_dir),
            "--register_as",
            "bench-rm-models",
        ],
        workdir / "models.log",
    )
    metrics = read_json(output_dir / "metrics.json")
    return {
        "pairwise_accuracy": metrics["eval_pairwise_accuracy"],
        "member_pairwise_accuracy": metrics["eval_member_pairwise_accuracy"],
        "ensemble_std": metrics["eval_ensemble_std"],
        "ensemble_relative_std": metrics["eval_ensemble_relative_std"],
        "error_rate_least_uncertain": metrics["eval_error_rate_least_uncertain"],
        "error_rate_most_uncertain": metrics["eval_error_rate_most_uncertain"],
        "averaged_pairwise_accuracy": metrics["eval_averaged_pairwise_accuracy"],
        "averaged_mean_correlation": metrics["eval_averaged_mean_correlation"],
        "train_runtime_s": metrics["train_runtime_s"],
        "parameters": metrics["total_params"],
        "body_forwards_per_response": settings.k,
    }


# ---------------------------------------------------------------------------------------------------------
# Design (b): k heads on one body, measured here only
# ---------------------------------------------------------------------------------------------------------


def run_heads(argv: list[str], settings: Settings, workdir: Path) -> dict:
    out = workdir / "heads.json"
    run_child(
        [
            sys.executable,
            "-m",
            "benchmarks.rm_ensemble",
            "--heads-worker",
            str(out),
            str(settings.k),
            "--",
            *argv,
            "--output_dir",
            str(workdir / "heads"),
        ],
        workdir / "heads.log",
    )
    return read_json(out)


def bootstrap_weights(heads: int, rankings: int, seed: int):
    """(heads, rankings) Poisson(1) weights: how often each head's bootstrap resample holds each ranking."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.ones(heads, rankings), generator=generator)


def weighted_head_loss(head_rewards, ranks, weights):
    """Σ_b w_b · loss_b / Σ_b w_b over the batch's rankings b, loss_b the K-way ranking loss of ranking b alone
    (rlhf.rm.loss.kway_ranking_loss); 0 when every weight is 0."""
    import torch

    from rlhf.rm.loss import kway_ranking_loss

    losses = torch.stack([kway_ranking_loss(head_rewards[b : b + 1], ranks[b : b + 1]) for b in range(len(ranks))])
    return (weights * losses).sum() / weights.sum().clamp(min=1.0)


def heads_worker(out: Path, heads: int, stage_argv: list[str]) -> None:
    """Train one body under `heads` bootstrapped heads, normalise each head, measure them on held-out rankings."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    from rlhf.config import parse_config
    from rlhf.generation import stop_token_ids_of
    from rlhf.rm.batches import RankingCollator, scores_on_grid, tokenize_rankings
    from rlhf.rm.config import RMStageConfig
    from rlhf.rm.data import load_ranking_splits
    from rlhf.rm.model import normalization_records
    from rlhf.rm.trainer import RankingTrainer
    from rlhf.stages import prologue

    config = parse_config(RMStageConfig, stage_argv)
    # A resolved config of the RM stage keeps the eval_on_start its run set; the heads are measured after training.
    config.eval_on_start = False
    inputs = prologue.resolve_inputs(config)
    stops = stop_token_ids_of(inputs.model_path, inputs.tokenizer)
    train_rankings, eval_rankings, _ = load_ranking_splits(config, inputs.tokenizer, stops)
    features = [
        {**feature, "index": index}
        for index, feature in enumerate(tokenize_rankings(train_rankings, inputs.tokenizer, stops))
    ]
    set_seed(config.seed)  # each of the k head rows starts from its own random draw
    model = AutoModelForSequenceClassification.from_pretrained(inputs.model_path, num_labels=heads)
    model.config.pad_token_id = inputs.tokenizer.pad_token_id
    weights = bootstrap_weights(heads, len(features), config.seed)
    collate = RankingCollator(inputs.tokenizer.pad_token_id)

    def collator(batch):
        return {**collate(batch), "index": torch.tensor([feature["index"] for feature in batch])}

    class HeadsTrainer(RankingTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits.float()
            batch_weights = weights[:, inputs["index"].cpu()].to(logits.device)
            loss = (
                sum(
                    weighted_head_loss(
                        scores_on_grid(logits[:, head], inputs["slot_index"], inputs["ranks"]),
                        inputs["ranks"],
                        batch_weights[head],
                    )
                    for head in range(heads)
                )
                / heads
            )
            return (loss, {}) if return_outputs else loss

    trainer = HeadsTrainer(model=model, args=config, train_dataset=features, data_collator=collator)
    started = time.perf_counter()
    result = trainer.train()
    model = trainer.model.eval()
    records, _ = normalization_records(config, inputs, train_rankings, stops)
    offsets = head_scores(
        model,
        inputs.tokenizer,
        [r["prompt"] for r in records],
        [r["completion"] for r in records],
        stops,
        config.max_length,
    ).mean(dim=0)
    flat = (
        head_scores(
            model,
            inputs.tokenizer,
            [r.prompt for r in eval_rankings for _ in r.completions],
            [c for r in eval_rankings for c in r.completions],
            stops,
            config.max_length,
        )
        - offsets
    )
    by_head = []
    for head in range(heads):
        rows, at = [], 0
        for ranking in eval_rankings:
            rows.append(flat[at : at + ranking.k, head].tolist())
            at += ranking.k
        by_head.append(rows)
    hidden = model.config.get_text_config().hidden_size
    write_json(
        out,
        {
            **held_out_measures(by_head, [list(r.ranks) for r in eval_rankings]),
            "train_runtime_s": result.metrics.get("train_runtime", time.perf_counter() - started),
            "parameters": sum(p.numel() for p in model.parameters()),
            "head_parameters": heads * hidden,
            "body_forwards_per_response": 1,
        },
    )


def head_scores(model, tokenizer, prompts, completions, stops, max_length: int, batch_size: int = 64):
    """(N, heads) raw scores, read as the reward model reads each (prompt, completion) (`reward_input_ids`)."""
    import torch

    from rlhf.data.formatting import reward_input_ids
    from rlhf.rm.model import pad_right

    parts = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids = [
                reward_input_ids(tokenizer, p, c, stop_token_ids=stops)[-max_length:]
                for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size])
            ]
            input_ids, attention_mask = pad_right(ids, tokenizer.pad_token_id)
            parts.append(model(input_ids=input_ids, attention_mask=attention_mask).logits.float())
    return torch.cat(parts)


def held_out_measures(by_member: list, ranks: list) -> dict:
    """What `rlhf.rm.evaluation` measures of an ensemble, from [member][ranking][completion] rewards."""
    from rlhf.rm.calibration import uncertainty_bins
    from rlhf.rm.evaluation import ensemble_spread, mean_rows, ranking_metrics

    bins = uncertainty_bins(by_member, ranks)
    return {
        "pairwise_accuracy": ranking_metrics(mean_rows(by_member), ranks)["pairwise_accuracy"],
        "member_pairwise_accuracy": [ranking_metrics(rows, ranks)["pairwise_accuracy"] for rows in by_member],
        **ensemble_spread(by_member),
        "error_rate_least_uncertain": bins[0].error_rate,
        "error_rate_most_uncertain": bins[-1].error_rate,
    }


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------


def run(settings: Settings, workdir: Path, demo_run: Path | None, log=print) -> dict:
    argv = shared_arguments(demo_run, workdir, settings)
    result = {"settings": asdict(settings), "machine": machine_info(), "demo_run": str(demo_run or "")}
    log(f"rm_ensemble: {settings.k} separate models")
    result["models"] = run_models(argv, settings, workdir)
    log(f"rm_ensemble: {settings.k} heads on one body")
    result["heads"] = run_heads(argv, settings, workdir)
    models, heads = result["models"], result["heads"]
    result["ratios"] = {
        "relative_std_models_over_heads": models["ensemble_relative_std"] / heads["ensemble_relative_std"]
        if heads["ensemble_relative_std"]
        else float("nan"),
        "train_time_models_over_heads": models["train_runtime_s"] / heads["train_runtime_s"],
    }
    return result


def markdown(result: dict) -> str:
    s, machine = result["settings"], result["machine"]
    lines = [
        f"Measured by `python -m benchmarks.rm_ensemble{' --smallest' if s['smallest'] else ''} --k {s['k']}` "
        f"on {machine['date']}: {machine['cpu']}, {machine['cpu_cores']} cores (shared: times are indicative), "
        f"seed {s['seed']}; held-out rankings of the demo's RM split.",
        "",
        "| design | accuracy of the mean | members' accuracies | std of members | relative std | error rate, "
        "least / most uncertain tenth | parameters | body forwards per response | training time (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("models", f"{s['k']} separate models"), ("heads", f"{s['k']} heads, one body")):
        row = result[name]
        members = ", ".join(f"{value:.3f}" for value in row["member_pairwise_accuracy"])
        lines.append(
            f"| {label} | {row['pairwise_accuracy']:.3f} | {members} | {row['ensemble_std']:.3f} | "
            f"{row['ensemble_relative_std']:.3f} | {row['error_rate_least_uncertain']:.3f} / "
            f"{row['error_rate_most_uncertain']:.3f} | {row['parameters']:,} | "
            f"{row['body_forwards_per_response']} | {row['train_runtime_s']:.1f} |"
        )
    ratios, models = result["ratios"], result["models"]
    lines += [
        "",
        f"Separate models disagree {ratios['relative_std_models_over_heads']:.2f}x as much as heads "
        f"(relative std) for {ratios['train_time_models_over_heads']:.2f}x the training time measured here "
        f"and {s['k']}x the parameters and scoring forwards. The models' weight average (PPO's critic "
        f"start) orders {models['averaged_pairwise_accuracy']:.3f} of the held-out pairs as the labels "
        f"do, and its scores correlate with the members' mean at "
        f"{models['averaged_mean_correlation']:.3f}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--heads-worker"]:
        heads_worker(Path(argv[1]), int(argv[2]), argv[argv.index("--") + 1 :])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-run", type=Path, help="a finished demo run (make demo): its SFT policy and rankings")
    parser.add_argument("--smallest", action="store_true", help="a tiny model on a few rankings: a smoke run")
    parser.add_argument("--k", type=int, default=4, help="members (models or heads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "rm_ensemble.json")
    parser.add_argument(
        "--results-dir", type=Path, default=REPO / "benchmarks", help="whose RESULTS.md gets the measured block"
    )
    parser.add_argument("--workdir", type=Path, help="kept (runs, logs, models) instead of a temporary directory")
    args = parser.parse_args(argv)
    if not args.smallest and args.demo_run is None:
        parser.error("--demo-run RUN_DIR (a finished `make demo`) is needed, or --smallest")
    settings = Settings.smoke() if args.smallest else Settings(k=args.k, seed=args.seed)
    measure_and_record(
        lambda workdir: run(settings, workdir, args.demo_run, log=lambda line: print(line, flush=True)),
        markdown,
        block=BLOCK,
        out=args.out,
        results_dir=args.results_dir,
        workdir=args.workdir,
        prefix="bench-rme-",
    )


if __name__ == "__main__":
    main()
