"""The tiny models and prompts every PPO benchmark runs on, built from config on disk (never downloaded).

The policy is the demo's Llama with its word-level tokenizer; the reward model (also the critic's start) is the
same architecture with a scalar head. Ours and the peer load the very same directories and prompt tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinySize:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4

    def describe(self) -> str:
        return f"Llama hidden {self.hidden_size}, {self.num_layers} layers, {self.num_heads} heads"


def build(root: Path, size: TinySize = TinySize(), num_prompts: int = 64, seed: int = 0) -> dict:
    """policy/, reward/, prompts.jsonl and prompt_ids.json (the prompts tokenized as our PPO stage tokenizes
    them) under `root`; returns their paths and the parameter counts. Reuses what an earlier call built."""
    from rlhf.data.formatting import prompt_token_ids
    from rlhf.demo.task import DemoSettings, corpus_words, make_split
    from rlhf.demo.tiny_model import build_tiny_model, build_tiny_reward_model
    from rlhf.models import load_tokenizer

    root = Path(root)
    manifest = root / "manifest.json"
    wanted = {"size": asdict(size), "num_prompts": num_prompts, "seed": seed}
    if manifest.is_file():
        built = json.loads(manifest.read_text())
        if built.get("settings") == wanted:
            return built
    root.mkdir(parents=True, exist_ok=True)
    policy = build_tiny_model(
        root / "policy",
        corpus_words(),
        hidden_size=size.hidden_size,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        seed=seed,
    )
    tokenizer = load_tokenizer(str(policy))
    reward = build_tiny_reward_model(root / "reward", policy, seed=seed + 1)

    records = make_split(num_prompts, seed=seed + 3, settings=DemoSettings())
    prompts = [{"prompt": record["prompt"]} for record in records]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    prompt_ids = [prompt_token_ids(tokenizer, p["prompt"]) for p in prompts]
    (root / "prompt_ids.json").write_text(json.dumps(prompt_ids))
    parameters = {"policy": parameter_count(policy, "causal_lm"), "reward": parameter_count(reward, "reward")}
    built = {
        "settings": wanted,
        "policy": str(policy),
        "reward": str(reward),
        "prompts": str(root / "prompts.jsonl"),
        "prompt_ids": str(root / "prompt_ids.json"),
        "parameters": parameters,
        "model": size.describe(),
        "vocab_size": len(tokenizer),
    }
    manifest.write_text(json.dumps(built, indent=2))
    return built


def parameter_count(path: Path, task: str) -> int:
    from rlhf.adaptation.checkpoint import load_adapted

    return sum(p.numel() for p in load_adapted(str(path), task=task).parameters())
