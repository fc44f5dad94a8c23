"""Write the demo's starting model and data files, as a user would bring their own.

python -m rlhf.demo.prepare --out runs/demo

runs/demo/base_model/              tiny Llama-style causal LM + tokenizer (Hugging Face format)
runs/demo/data/sft_train.jsonl     human-like demonstrations (prompt/completion)
runs/demo/data/sft_eval.jsonl      held-out demonstrations
runs/demo/data/prompts_train.jsonl prompts for sampling responses to rank, and for PPO
runs/demo/data/prompts_eval.jsonl  held-out prompts for win rates and gold scores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhf.demo.task import DemoSettings, corpus_words, make_split
from rlhf.demo.tiny_model import build_tiny_model
from rlhf.io import atomic_write_text

SPLITS = {"sft_train": 5000, "sft_eval": 200, "prompts_train": 12000, "prompts_eval": 100}
# Written last, with what the demo was written with: a directory without it (an interrupted write) or with other
# settings (an older demo, another scale) is written again.
MANIFEST = "demo.json"


def split_sizes(scale: float) -> dict[str, int]:
    return {split: max(8, int(count * scale)) for split, count in SPLITS.items()}


def manifest(sizes: dict[str, int], hidden_size: int, num_layers: int, seed: int) -> dict:
    return {"sizes": sizes, "hidden_size": hidden_size, "num_layers": num_layers, "seed": seed}


def demo_settings(*, scale: float = 1.0, hidden_size: int = 128, num_layers: int = 3, seed: int = 0) -> dict:
    """What `python -m rlhf.demo.prepare` with these options writes into the demo's manifest."""
    return manifest(split_sizes(scale), hidden_size, num_layers, seed)


def is_prepared(out: str | Path, settings: dict) -> bool:
    """True when `out` holds a whole demo written with `settings`."""
    try:
        return json.loads((Path(out) / MANIFEST).read_text()) == settings
    except (OSError, ValueError):
        return False


def demo_inputs(out: str | Path) -> dict[str, dict[str, str]]:
    """The stage settings that point at the demo written to `out`: the base model and demonstrations of SFT, the
    prompts of labeling and PPO."""
    out, data = Path(out), Path(out) / "data"
    return {
        "sft": {
            "model_name_or_path": str(out / "base_model"),
            "train_file": str(data / "sft_train.jsonl"),
            "eval_file": str(data / "sft_eval.jsonl"),
        },
        "labels": {"label_prompts": str(data / "prompts_train.jsonl")},
        "ppo": {
            "prompts_file": str(data / "prompts_train.jsonl"),
            "eval_prompts_file": str(data / "prompts_eval.jsonl"),
        },
    }


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def prepare(
    out: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 3,
    sizes: dict[str, int] | None = None,
    settings: DemoSettings = DemoSettings(),
) -> Path:
    """Write the demo's files under `out`; every split's prompts are distinct from the others'."""
    out = Path(out)
    sizes = {**SPLITS, **(sizes or {})}
    (out / MANIFEST).unlink(missing_ok=True)  # a rewrite killed half-way must not pass for the old demo
    seen: set[str] = set()
    for offset, (split, count) in enumerate(sizes.items()):
        records = make_split(count, seed * 1000 + offset, settings, exclude=frozenset(seen))
        seen.update(record["prompt"] for record in records)
        if split.startswith("prompts_"):
            records = [{"prompt": record["prompt"]} for record in records]
        atomic_write_text(out / "data" / f"{split}.jsonl", _jsonl(records))
    build_tiny_model(out / "base_model", corpus_words(), hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    atomic_write_text(out / MANIFEST, json.dumps(manifest(sizes, hidden_size, num_layers, seed), indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.demo.prepare", description="Write the demo model and data.")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every split's size (smoke tests: 0.02)")
    args = parser.parse_args(argv)
    path = prepare(
        args.out,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        sizes=split_sizes(args.scale),
    )
    print(f"demo model and data written to {path}")


if __name__ == "__main__":
    main()
