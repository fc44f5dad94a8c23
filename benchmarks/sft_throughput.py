"""SFT training throughput on the demo's tiny model: our stage against TRL's SFTTrainer with its defaults, and
sequence packing on against off, in alternating rounds of one run (the machine is shared: read the ratios).

Our stage is TRL's SFTTrainer with our config on top (completion-only loss, our data checks, evaluation and
registration around it), so the ratio against plain TRL shows what our layer costs in the training loop itself;
packing shows what it saves on short demonstrations.

    python -m benchmarks.sft_throughput --out benchmarks/results/sft_throughput.json
    python -m benchmarks.sft_throughput --out /tmp/sft.json --smoke      # a few steps, for the smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_json


def _tokens_per_second(log_history: list[dict], runtime: float) -> tuple[float, int]:
    tokens = max((row.get("num_tokens", 0) for row in log_history), default=0)
    return tokens / runtime, int(tokens)


def run_ours(workdir: Path, steps: int, batch: int, packing: bool) -> dict:
    """Our stage, in process, as `python -m rlhf.stages.sft` runs it; throughput from its Trainer's own timing."""
    from rlhf.stages.sft import main

    out = Path(tempfile.mkdtemp(dir=workdir))
    main(["--model_name_or_path", str(workdir / "model"), "--train_file", str(workdir / "train.jsonl"),
          "--output_dir", str(out / "run"), "--registry_dir", str(out / "registry"), "--max_length", "64",
          "--per_device_train_batch_size", str(batch), "--max_steps", str(steps), "--logging_steps", "1",
          "--save_strategy", "no", "--report_to", "none", "--packing", str(packing).lower(), "--disable_tqdm", "true"])
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    history = [json.loads(line) for line in (out / "run" / "log_history.jsonl").read_text().splitlines()]
    rate, tokens = _tokens_per_second(history, metrics["train_runtime_s"])
    return {"tokens_per_second": rate, "tokens": tokens, "runtime_s": metrics["train_runtime_s"]}


def run_trl_defaults(workdir: Path, steps: int, batch: int) -> dict:
    """TRL's SFTTrainer as its documentation shows it: SFTConfig defaults, same data, model, batch and length."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    records = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    config = SFTConfig(output_dir=tempfile.mkdtemp(dir=workdir), max_length=64, per_device_train_batch_size=batch,
                       max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                       bf16=False, dataloader_pin_memory=False)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(workdir / "model"), args=config,
                         processing_class=AutoTokenizer.from_pretrained(workdir / "model"),
                         train_dataset=datasets.Dataset.from_list(records))
    started = time.perf_counter()
    result = trainer.train()
    runtime = result.metrics.get("train_runtime", time.perf_counter() - started)
    rate, tokens = _tokens_per_second(trainer.state.log_history, runtime)
    return {"tokens_per_second": rate, "tokens": tokens, "runtime_s": runtime}


def measure(workdir: Path, *, steps: int, batch: int, rounds: int, examples: int) -> dict:
    from rlhf.demo.task import corpus_words, make_split
    from rlhf.demo.tiny_model import build_tiny_model

    build_tiny_model(workdir / "model", corpus_words(), hidden_size=64, num_layers=2)
    (workdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_split(examples, seed=0)))
    runs: dict[str, list[dict]] = {"ours": [], "trl_defaults": [], "ours_packing": []}
    for _ in range(rounds):  # alternating, so that the machine's drift falls on every variant alike
        runs["ours"].append(run_ours(workdir, steps, batch, packing=False))
        runs["trl_defaults"].append(run_trl_defaults(workdir, steps, batch))
        runs["ours_packing"].append(run_ours(workdir, steps, batch, packing=True))
    median = {name: statistics.median(r["tokens_per_second"] for r in rows) for name, rows in runs.items()}
    return {
        "tokens_per_second": median["ours"],
        "trl_defaults_tokens_per_second": median["trl_defaults"],
        "packing_tokens_per_second": median["ours_packing"],
        "ours_over_trl_defaults": median["ours"] / median["trl_defaults"],
        "packing_over_no_packing": median["ours_packing"] / median["ours"],
        "settings": {"model": "demo tiny Llama, hidden 64, 2 layers", "steps": steps, "batch": batch,
                     "max_length": 64, "rounds": rounds, "examples": examples,
                     "tokens": "non-padding tokens the Trainer counted (num_tokens) / train_runtime"},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/sft_throughput.json")
    parser.add_argument("--smoke", action="store_true", help="smallest settings: 2 steps, one round")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        result = measure(Path(workdir), steps=2 if args.smoke else 30, batch=8 if args.smoke else 32,
                         rounds=1 if args.smoke else 3, examples=64 if args.smoke else 1024)
    write_json(Path(args.out), result)
    print(f"SFT tokens/s: ours {result['tokens_per_second']:.0f}, TRL defaults "
          f"{result['trl_defaults_tokens_per_second']:.0f} (ours/TRL {result['ours_over_trl_defaults']:.2f}), "
          f"packing {result['packing_tokens_per_second']:.0f} (x{result['packing_over_no_packing']:.2f})")


if __name__ == "__main__":
    main()
