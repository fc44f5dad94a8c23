"""Reward-model training with shared-prompt forwards against one sequence per completion, alternating in one run.

Real preference data has long prompts and short replies (HH-RLHF's multi-turn dialogues: hundreds of prompt
tokens before a reply of a few dozen). One sequence per completion computes every prompt K times; a shared-prompt
row computes it once (rlhf/shared_prompt/). This script times the RM stage's own training step (`ranking_rewards`,
the K-way loss, backward, AdamW) both ways on the same generated rankings, each way on its own copy of the same
weights, in alternating order, and counts the tokens each computes (padding included: what every layer runs on).

Lengths are generated, not copied: HH-like (prompts of 150-400 tokens, replies of 20-80) at K = 4 and 9,
300-token prompts at K = 4 (the issue's goal: at most 0.5x the time), and the demo's own lengths (prompts of 9-14
tokens, replies of 2-12, K = 4), where there is little prompt to share.

    python -m benchmarks.shared_prompt                                    # Llama hidden 256, 4 layers
    python -m benchmarks.shared_prompt --hidden-size 1024 --num-layers 6  # ~100M, on a GPU
    python -m benchmarks.shared_prompt --smoke                            # smallest settings, seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass, replace

from benchmarks.common import RESULTS_DIR, add_standalone_arguments, median, ratio, write_json

SIDES = ("shared", "separate")


@dataclass(frozen=True)
class Case:
    name: str
    k: int
    prompt_tokens: tuple[int, int]  # drawn uniformly from [low, high]
    reply_tokens: tuple[int, int]


CASES = (
    Case("HH-like, K=4", 4, (150, 400), (20, 80)),
    Case("HH-like, K=9", 9, (150, 400), (20, 80)),
    Case("300-token prompts, K=4", 4, (300, 300), (20, 80)),
    Case("demo lengths, K=4", 4, (9, 14), (2, 12)),
)


@dataclass(frozen=True)
class Settings:
    rankings_per_step: int = 8
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 1024
    warmup: int = 1  # untimed steps per side and case
    repeats: int = 5  # timed steps per side and case; medians are reported
    bf16: bool = False
    seed: int = 0

    @classmethod
    def smallest(cls) -> Settings:
        return cls(rankings_per_step=2, hidden_size=32, num_layers=1, num_heads=2, vocab_size=64, repeats=1)

    def describe(self) -> str:
        return (
            f"LlamaForSequenceClassification hidden {self.hidden_size}, {self.num_layers} layers, "
            f"{self.num_heads} heads, vocab {self.vocab_size}, {'bf16' if self.bf16 else 'float32'}"
        )


PAD_ID, FIRST_REAL_ID = 0, 3


def reward_model(settings: Settings, device):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=settings.vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=1024,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=1,
        attn_implementation="sdpa",
    )
    torch.manual_seed(settings.seed)
    model = LlamaForSequenceClassification(config).to(device)
    return model.to(torch.bfloat16) if settings.bf16 else model


def ranking_batch(case: Case, settings: Settings, generator):
    """`rankings_per_step` rankings of K completions with lengths drawn for `case`, collated as the RM stage
    collates them (one right-padded sequence per completion)."""
    import torch

    from rlhf.rm.batches import RankingCollator

    def tokens(low_high) -> list[int]:
        count = int(torch.randint(low_high[0], low_high[1] + 1, (1,), generator=generator))
        return torch.randint(FIRST_REAL_ID, settings.vocab_size, (count,), generator=generator).tolist()

    features = []
    for _ in range(settings.rankings_per_step):
        prompt = tokens(case.prompt_tokens)
        features.append(
            {
                "input_ids": [prompt + tokens(case.reply_tokens) for _ in range(case.k)],
                "ranks": (torch.randperm(case.k, generator=generator) + 1).tolist(),
            }
        )
    return RankingCollator(pad_token_id=PAD_ID)(features)


def tokens_computed(batch, shared: bool) -> int:
    """Positions every layer computes: the padded batch, or the shared-prompt rows."""
    from rlhf.rm.batches import ranking_sizes
    from rlhf.shared_prompt.layout import shared_prompt_rows

    if not shared:
        return batch["input_ids"].numel()
    rows = shared_prompt_rows(
        batch["input_ids"], batch["attention_mask"], ranking_sizes(batch["slot_index"], batch["ranks"])
    )
    return rows.input_ids.numel()


def training_step(model, optimizer, batch, support) -> float:
    """The RM stage's step: every completion scored, the K-way loss, backward, AdamW."""
    import torch

    from rlhf.rm.loss import kway_ranking_loss
    from rlhf.rm.trainer import ranking_rewards

    loss = kway_ranking_loss(ranking_rewards(model, batch, support).float(), batch["ranks"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return loss.item()


def time_case(base_model, case: Case, settings: Settings, support, device) -> dict:
    import torch

    from rlhf.shared_prompt.forward import OFF

    generator = torch.Generator().manual_seed(settings.seed + case.k)
    batches = [ranking_batch(case, settings, generator) for _ in range(settings.warmup + settings.repeats)]
    models = {side: copy.deepcopy(base_model).train() for side in SIDES}
    optimizers = {side: torch.optim.AdamW(models[side].parameters(), lr=1e-5) for side in SIDES}
    supports = {"shared": support, "separate": OFF}
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    first_loss: dict[str, float] = {}
    for step, batch in enumerate(batches):
        batch = {key: value.to(device) for key, value in batch.items()}
        for side in SIDES if step % 2 == 0 else tuple(reversed(SIDES)):
            started = time.perf_counter()
            loss = training_step(models[side], optimizers[side], batch, supports[side])
            if step >= settings.warmup:
                seconds[side].append(time.perf_counter() - started)
            first_loss.setdefault(side, loss)
    tokens = {side: [tokens_computed(batch, side == "shared") for batch in batches] for side in SIDES}
    real = [int(batch["attention_mask"].sum()) for batch in batches]
    medians = {side: median(values) for side, values in seconds.items()}
    return {
        **asdict(case),
        "step_s": seconds,
        "median_step_s": medians,
        "time_ratio": ratio(medians["shared"], medians["separate"]),
        "tokens_computed": {side: sum(values) for side, values in tokens.items()},
        "real_tokens_separate": sum(real),
        "tokens_ratio": ratio(sum(tokens["shared"]), sum(tokens["separate"])),
        # Same weights and batch: the two losses of the first step agree to float tolerance.
        "first_step_loss": first_loss,
    }


def run(settings: Settings, cases=CASES, log=print) -> dict:
    import torch

    from rlhf.shared_prompt.forward import reward_model_support

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = reward_model(settings, device)
    support = reward_model_support(model, across_ranks=False)
    if not support.enabled:
        raise RuntimeError(support.line("benchmark's reward model"))
    rows = []
    for case in cases:
        rows.append(time_case(model, case, settings, support, device))
        log(f"shared_prompt: {case.name}: time {rows[-1]['time_ratio']:.2f}x, tokens {rows[-1]['tokens_ratio']:.2f}x")
    return {
        "settings": asdict(settings),
        "model": settings.describe(),
        "device": device,
        "step": "ranking_rewards + K-way loss + backward + AdamW step (the RM stage's step)",
        "rows": rows,
    }


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"{result['model']} on {result['device']}; {s['rankings_per_step']} rankings per step, medians of "
        f"{s['repeats']} steps per side after {s['warmup']} warm-up, alternating.",
        "",
        "| rankings | prompt tokens | reply tokens | tokens computed, shared / separate | "
        "step shared (s) | step separate (s) | time, shared / separate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['name']} | {row['prompt_tokens'][0]}-{row['prompt_tokens'][1]} | "
            f"{row['reply_tokens'][0]}-{row['reply_tokens'][1]} | {row['tokens_ratio']:.2f} | "
            f"{row['median_step_s']['shared']:.3f} | {row['median_step_s']['separate']:.3f} | "
            f"{row['time_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    for name in ("rankings_per_step", "hidden_size", "num_layers", "num_heads", "warmup", "repeats"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and activations (a GPU's setting)")
    add_standalone_arguments(parser, RESULTS_DIR / "shared_prompt.json", "smallest settings (tiny model, 1 step)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = (
        Settings.smallest()
        if args.smoke
        else Settings(
            rankings_per_step=args.rankings_per_step,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_heads=args.num_heads,
            warmup=args.warmup,
            repeats=args.repeats,
            bf16=args.bf16,
        )
    )
    result = run(replace(settings, seed=args.seed))
    print(markdown(result))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
