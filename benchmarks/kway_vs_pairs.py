"""Reward-model training throughput: the K-way ranking loss against the C(K, 2) pairwise expansion.

InstructGPT (§3.5) scores each of a prompt's K responses once and takes all C(K, 2) comparisons from those
K rewards; frameworks that train on (chosen, rejected) pairs run 2·C(K, 2) forward passes for the same
ranking. This script times one optimiser step (forward, loss, backward, AdamW) of each on the same
rankings, with a tiny LlamaForSequenceClassification built from a config (the sizes of
tests/conftest.py's `tiny_llama_config`), and reports rankings per second.

    python -m benchmarks.kway_vs_pairs                 # K = 2, 4, 6, 9; about a minute on 2 CPU cores
    python -m benchmarks.kway_vs_pairs --smoke         # smallest settings, a few seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS_DIR, add_standalone_arguments
from rlhf.rm.loss import kway_ranking_loss, ranking_pair_mask

VOCAB_SIZE, PAD_ID, FIRST_REAL_ID = 64, 0, 3


# The baseline: the C(K, 2) pair expansion other frameworks train on.


def expand_to_pairs(ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C(K, 2) expansion other frameworks train on: one (chosen, rejected) row per ordered pair.

    Returns (ranking_index, chosen_index, rejected_index), three long tensors of length P (number of pairs),
    sorted by ranking, then chosen slot, then rejected slot. `responses[ranking_index, chosen_index]` is
    preferred to `responses[ranking_index, rejected_index]`. Ties and empty slots give no row.
    """
    if ranks.dim() != 2:
        raise ValueError(f"ranks must be (B, K); got {tuple(ranks.shape)}")
    ranking_index, chosen_index, rejected_index = ranking_pair_mask(ranks).nonzero(as_tuple=True)
    return ranking_index, chosen_index, rejected_index


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss on (chosen, rejected) pairs: mean_p -log σ(r_chosen,p - r_rejected,p).

    No pairs gives 0 with a gradient path, as `kway_ranking_loss` does.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen and rejected rewards differ in shape: "
            f"{tuple(chosen_rewards.shape)} vs {tuple(rejected_rewards.shape)}"
        )
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.sum() / max(losses.numel(), 1)


def tiny_reward_model(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attention_bias=True,
        mlp_bias=True,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        num_labels=1,
    )
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config)


def make_rankings(num_rankings: int, k: int, seq_len: int, generator: torch.Generator):
    """Random right-padded sequences (B, K, L), their attention mask, and strict ranks 1..K (a permutation)."""
    lengths = torch.randint(seq_len // 4, seq_len + 1, (num_rankings, k), generator=generator)
    input_ids = torch.randint(FIRST_REAL_ID, VOCAB_SIZE, (num_rankings, k, seq_len), generator=generator)
    attention_mask = (torch.arange(seq_len) < lengths[..., None]).long()
    input_ids = input_ids * attention_mask + PAD_ID * (1 - attention_mask)
    ranks = torch.stack([torch.randperm(k, generator=generator) + 1 for _ in range(num_rankings)])
    return input_ids, attention_mask, ranks


def score(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)


def kway_step(model, optimizer, input_ids, attention_mask, ranks):
    """K forward passes per ranking: every response scored once, all pairs taken from the K rewards."""
    num_rankings, k, seq_len = input_ids.shape
    rewards = score(model, input_ids.view(-1, seq_len), attention_mask.view(-1, seq_len)).view(num_rankings, k)
    loss = kway_ranking_loss(rewards, ranks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def pairs_step(model, optimizer, input_ids, attention_mask, ranks):
    """2·C(K, 2) forward passes per ranking: each (chosen, rejected) pair scored on its own, as pair trainers do."""
    ranking_index, chosen_index, rejected_index = expand_to_pairs(ranks)
    chosen_ids, rejected_ids = input_ids[ranking_index, chosen_index], input_ids[ranking_index, rejected_index]
    chosen_mask = attention_mask[ranking_index, chosen_index]
    rejected_mask = attention_mask[ranking_index, rejected_index]
    # One concatenated forward for chosen and rejected (the usual trick); it is still 2·P sequences.
    rewards = score(model, torch.cat([chosen_ids, rejected_ids]), torch.cat([chosen_mask, rejected_mask]))
    chosen_rewards, rejected_rewards = rewards.chunk(2)
    loss = pairwise_loss(chosen_rewards, rejected_rewards)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def time_both(base_model, batch, warmup: int, repeats: int) -> dict[str, tuple[list[float], float]]:
    """Per method: seconds for each of `repeats` optimiser steps after `warmup` untimed ones, and the loss
    of the first step. Each method trains its own copy of the same initial weights; the timed steps
    alternate between the methods, so that load from other processes drifting over time hits both alike."""
    steps = {"kway": kway_step, "pairs": pairs_step}
    models = {name: copy.deepcopy(base_model).train() for name in steps}
    optimizers = {name: torch.optim.AdamW(models[name].parameters(), lr=1e-4) for name in steps}
    first_loss = {name: steps[name](models[name], optimizers[name], *batch) for name in steps}
    for _ in range(max(warmup - 1, 0)):
        for name in steps:
            steps[name](models[name], optimizers[name], *batch)
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name in steps:
            start = time.perf_counter()
            steps[name](models[name], optimizers[name], *batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: (seconds[name], first_loss[name]) for name in steps}


def run(ks, num_rankings, seq_len, warmup, repeats, seed):
    base_model = tiny_reward_model(seed)
    rows = []
    for k in ks:
        batch = make_rankings(num_rankings, k, seq_len, torch.Generator().manual_seed(seed + k))
        timings = time_both(base_model, batch, warmup, repeats)
        (kway_seconds, kway_loss), (pairs_seconds, pairs_loss) = timings["kway"], timings["pairs"]
        kway_rate = num_rankings / statistics.median(kway_seconds)
        pairs_rate = num_rankings / statistics.median(pairs_seconds)
        rows.append(
            {
                "k": k,
                "pairs_per_ranking": math.comb(k, 2),
                "kway_sequences_per_ranking": k,
                "pairs_sequences_per_ranking": 2 * math.comb(k, 2),
                "kway_rankings_per_s": round(kway_rate, 2),
                "pairs_rankings_per_s": round(pairs_rate, 2),
                "speedup": round(kway_rate / pairs_rate, 2),
                "kway_step_s": [round(s, 5) for s in kway_seconds],
                "pairs_step_s": [round(s, 5) for s in pairs_seconds],
                # Strict rankings have no ties, so both losses must agree on the same weights.
                "first_step_loss_kway": round(kway_loss, 6),
                "first_step_loss_pairs": round(pairs_loss, 6),
            }
        )
    return rows


def markdown_table(rows) -> str:
    lines = [
        "| K | pairs | sequences K-way | sequences pairs | K-way rankings/s | pairs rankings/s | speedup |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['k']} | {row['pairs_per_ranking']} | {row['kway_sequences_per_ranking']} | "
            f"{row['pairs_sequences_per_ranking']} | {row['kway_rankings_per_s']:.1f} | "
            f"{row['pairs_rankings_per_s']:.1f} | {row['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6, 9], help="responses per ranking")
    parser.add_argument("--rankings", type=int, default=8, help="rankings per optimiser step")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per response, padding included")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported")
    add_standalone_arguments(
        parser, RESULTS_DIR / "kway_vs_pairs.json", "smallest settings (K = 2, 4; 2 rankings; 1 repeat)"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.ks, args.rankings, args.seq_len, args.warmup, args.repeats = [2, 4], 2, 16, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = run(args.ks, args.rankings, args.seq_len, args.warmup, args.repeats, args.seed)
    print(markdown_table(rows))
    settings = {
        "ks": args.ks,
        "rankings_per_step": args.rankings,
        "seq_len": args.seq_len,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "seed": args.seed,
        "smoke": args.smoke,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "model": "LlamaForSequenceClassification hidden 32, 2 layers, vocab 64",
        "step": "forward + loss + backward + AdamW step",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
