"""SFT throughput: training tokens per second of our Stage 1 against baselines measured in the same run.

Five ways to fine-tune the same model on the same demonstrations with the same optimiser and batch:

    hf_trainer       plain transformers Trainer: prompt + completion tokenized as one text, loss on every token,
                     rows padded to the longest in the batch (DataCollatorForLanguageModeling)
    trl_sft          TRL's SFTTrainer with its defaults (loss on the completion only, no packing)
    trl_sft_packing  the same with `packing=True`: best-fit-decreasing rows of max_length, then the whole batch
                     flattened into one padding-free row (built for flash attention's variable-length kernels)
    ours             python -m rlhf.stages.sft, as configs/sft.yaml runs it (TRL's loop underneath)
    ours_packing     the same with `packing: true`: TRL's packed rows, kept as rows when the model has no
                     variable-length attention (rlhf/sft/packing.py), positions restarting per demonstration

Throughput is non-padding tokens seen by the model (the Trainer's own `num_input_tokens_seen`, non_padding)
divided by the Trainer's `train_runtime` (the whole training loop, data loading included). The stage's
end-to-end wall time (loading, checks, saving, registering) is reported separately. Runs alternate between the
variants for each repeat, so that load from other processes drifting over time hits all alike; medians are
reported, with ratios against the baselines. Without flash attention (a CPU), a flattened batch costs
(batch x max_length)^2 in attention, so trl_sft_packing runs a quarter of the steps (at least 3): its rate is
per token like the others'.

    python -m benchmarks.sft_throughput            # demo model (Llama hidden 128, 3 layers), ~7 min on 2 shared cores
    python -m benchmarks.sft_throughput --smoke    # smallest settings, well under a minute

Models are built from config in a temporary directory, never downloaded.
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

from benchmarks.common import RESULTS_DIR, add_standalone_arguments

VARIANTS = ("hf_trainer", "trl_sft", "trl_sft_packing", "ours", "ours_packing")


def build_inputs(root: Path, hidden_size: int, num_layers: int, records: int, seed: int) -> dict:
    from rlhf.demo.task import corpus_words, make_split
    from rlhf.demo.tiny_model import build_tiny_model

    model = build_tiny_model(root / "base", corpus_words(), hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in make_split(records, seed=seed)))
    return {"model": str(model), "train": str(train)}


def shared_settings(args, output_dir: Path) -> dict:
    """The run shape every variant shares: what a fair comparison holds fixed."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        seed=args.seed,
        logging_steps=args.steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )


def throughput(log_history: list[dict]) -> dict:
    tokens = max(row["num_input_tokens_seen"] for row in log_history if "num_input_tokens_seen" in row)
    runtime = next(row["train_runtime"] for row in log_history if "train_runtime" in row)
    steps = max(row["step"] for row in log_history)
    return {
        "steps": steps,
        "tokens": int(tokens),
        "train_runtime_s": runtime,
        "tokens_per_s": tokens / runtime,
        "final_loss": next(row["train_loss"] for row in log_history if "train_loss" in row),
    }


def run_hf_trainer(paths: dict, args, output_dir: Path) -> dict:
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(paths["model"])
    records = [json.loads(line) for line in Path(paths["train"]).read_text().splitlines()]
    texts = [r["prompt"] + r["completion"] for r in records]
    encoded = tokenizer(texts, truncation=True, max_length=args.max_length - 1)
    # EOS appended as TRL does, so that both see the same tokens per demonstration.
    rows = [{"input_ids": ids + [tokenizer.eos_token_id]} for ids in encoded["input_ids"]]
    trainer = Trainer(
        model=load_adapted(paths["model"], task="causal_lm", is_trainable=True),
        args=TrainingArguments(**shared_settings(args, output_dir)),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    return throughput(trainer.state.log_history)


def run_trl_sft(paths: dict, args, output_dir: Path, packing: bool) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.models import load_tokenizer

    records = [json.loads(line) for line in Path(paths["train"]).read_text().splitlines()]
    # TRL turns bf16 on by default, which its own validation refuses on a CPU; ours resolves it the same way.
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    settings = shared_settings(args, output_dir)
    if packing:
        settings["max_steps"] = max(args.steps // 4, 3)
    config = SFTConfig(max_length=args.max_length, bf16=bf16, packing=packing, **settings)
    trainer = SFTTrainer(
        model=load_adapted(paths["model"], task="causal_lm", is_trainable=True),
        args=config,
        processing_class=load_tokenizer(paths["model"]),
        train_dataset=datasets.Dataset.from_list(records),
    )
    trainer.train()
    return throughput(trainer.state.log_history)


def run_ours(paths: dict, args, output_dir: Path, packing: bool) -> dict:
    from rlhf.config import parse_config, settings_to_argv
    from rlhf.stages.sft import SFTStageConfig, run

    settings = {
        **shared_settings(args, output_dir),
        "model_name_or_path": paths["model"],
        "train_file": paths["train"],
        "registry_dir": str(output_dir / "registry"),
        "max_length": args.max_length,
        "packing": packing,
    }
    argv = settings_to_argv(settings)
    start = time.perf_counter()
    run(parse_config(SFTStageConfig, argv))
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in (output_dir / "log_history.jsonl").read_text().splitlines()]
    return {**throughput(history), "stage_wall_s": wall}


def run_variant(name: str, paths: dict, args, output_dir: Path) -> dict:
    torch.manual_seed(args.seed)
    if name == "hf_trainer":
        return run_hf_trainer(paths, args, output_dir)
    if name.startswith("trl_sft"):
        return run_trl_sft(paths, args, output_dir, packing=name == "trl_sft_packing")
    return run_ours(paths, args, output_dir, packing=name == "ours_packing")


def summarise(runs: dict[str, list[dict]]) -> dict:
    medians = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    rate = {name: m["tokens_per_s"] for name, m in medians.items()}
    ratios = {
        "ours_vs_trl_sft": rate["ours"] / rate["trl_sft"],
        "ours_vs_hf_trainer": rate["ours"] / rate["hf_trainer"],
        "packing_on_vs_off": rate["ours_packing"] / rate["ours"],
        "ours_packing_vs_trl_sft": rate["ours_packing"] / rate["trl_sft"],
        "ours_packing_vs_trl_sft_packing": rate["ours_packing"] / rate["trl_sft_packing"],
        "trl_sft_packing_vs_trl_sft": rate["trl_sft_packing"] / rate["trl_sft"],
        "ours_packing_vs_hf_trainer": rate["ours_packing"] / rate["hf_trainer"],
    }
    return {
        "medians": {name: {k: round(v, 4) for k, v in m.items()} for name, m in medians.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }


def markdown_table(summary: dict) -> str:
    lines = ["| variant | tokens/s | train runtime s | tokens | stage wall s |", "|---|---:|---:|---:|---:|"]
    for name, m in summary["medians"].items():
        wall = f"{m['stage_wall_s']:.1f}" if "stage_wall_s" in m else "-"
        lines.append(f"| {name} | {m['tokens_per_s']:.0f} | {m['train_runtime_s']:.2f} | {m['tokens']:.0f} | {wall} |")
    lines.append("")
    lines += [f"- {name}: {ratio:.2f}x" for name, ratio in summary["ratios"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=128, help="the demo model's width")
    parser.add_argument("--num-layers", type=int, default=3, help="the demo model's depth")
    parser.add_argument("--records", type=int, default=2000, help="demonstrations in the training set")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per optimiser step (configs/sft.yaml)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per row (configs/sft.yaml)")
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant; medians are reported")
    add_standalone_arguments(parser, RESULTS_DIR / "sft_throughput.json", "smallest settings (4 steps, 1 repeat)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.hidden_size, args.num_layers, args.records, args.batch_size, args.steps, args.repeats = 32, 2, 64, 8, 4, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets

    datasets.disable_progress_bars()  # one bar per dataset map and run would bury the results

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="sft_throughput_") as tmp:
        root = Path(tmp)
        paths = build_inputs(root, args.hidden_size, args.num_layers, args.records, args.seed)
        # One short untimed round first: imports and first-call kernels would otherwise land on whichever
        # variant runs first.
        warmup = argparse.Namespace(**{**vars(args), "steps": 2})
        for name in VARIANTS:
            run_variant(name, paths, warmup, root / f"{name}_warmup")
        for repeat in range(1, args.repeats + 1):
            for name in VARIANTS:
                result = run_variant(name, paths, args, root / f"{name}_{repeat}")
                runs[name].append(result)
                print(f"repeat {repeat} {name}: {result['tokens_per_s']:.0f} tokens/s", flush=True)

    summary = summarise(runs)
    print(markdown_table(summary))
    settings = {
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "records": args.records,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "repeats": args.repeats,
        "seed": args.seed,
        "smoke": args.smoke,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "model": f"LlamaForCausalLM hidden {args.hidden_size}, {args.num_layers} layers (rlhf.demo.tiny_model)",
        "data": "rlhf.demo.task make_split prompt/completion records",
        "tokens": "non-padding tokens seen (Trainer num_input_tokens_seen='non_padding')",
        "time": "Trainer train_runtime (the training loop); stage_wall_s: the whole stage run",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, **summary, "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
