"""What a PPO run reports: the metrics of each step, and at the end the comparison with the SFT policy.

The end of a run: the actor is saved in Hugging Face format (LoRA merged when configured), then rank 0 samples
responses to held-out prompts from the SFT policy and the PPO policy, scores both under the reward model and
(on the demo) the gold scorer, writes the win rates, samples and metrics, and registers `ppo` with its parents.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from statistics import fmean
from typing import Any, Callable, Sequence

import torch

from rlhf import distributed, losses
from rlhf.data.formatting import prompt_text
from rlhf.rollout import Rollout


def step_metrics(step: int, rollout: Rollout, kl: torch.Tensor, result, beta: float, prompts: Sequence[Any],
                 texts: Sequence[str], gold: Callable[[str, str], float] | None, times: tuple[float, float, float],
                 skipped_updates: int, ptx: bool, eos_token_id: int) -> dict[str, Any]:
    """One flat row of ppo_metrics.jsonl, averaged over ranks (contracts: the PPO metric keys)."""
    from rlhf.ppo.metrics import mean_over_ranks

    mask = rollout.response_mask
    lengths = mask.sum(dim=-1).float()

    def mean_stat(name: str) -> float:
        values = [float(getattr(stats, name)) for stats in result.stats]
        return fmean(values) if values else float("nan")

    time_generation, time_scoring, time_training = times
    values = {
        "rm_score": rollout.scores.float().mean().item(),
        "kl": kl.sum(dim=-1).mean().item(),
        "entropy": mean_stat("entropy"),
        "response_length": lengths.mean().item(),
        "policy_loss": mean_stat("policy_loss"),
        "value_loss": mean_stat("value_loss"),
        "clip_fraction": mean_stat("clip_fraction"),
        "approx_kl": mean_stat("approx_kl"),
        "value_explained_variance": float(losses.explained_variance(rollout.values, rollout.returns, mask)),
        "non_eos_fraction": non_eos_fraction(rollout, eos_token_id),
        "time_generation": time_generation,
        "time_scoring": time_scoring,
        "time_training": time_training,
        "tokens_per_second": lengths.sum().item() / max(time_generation, 1e-9),
    }
    if gold is not None:
        values["gold_score"] = fmean(gold(prompt, text) for prompt, text in zip(prompts, texts))
    if ptx:
        values["ptx_loss"] = mean_stat("ptx_loss")
    values = mean_over_ranks(values)
    # Throughput adds up over ranks; the mean above is per rank.
    values["tokens_per_second"] *= distributed.world_size()
    return {"step": step, **values, "beta": beta, "skipped_updates": skipped_updates}


def non_eos_fraction(rollout: Rollout, eos_token_id: int) -> float:
    """Share of responses whose last real token is not EOS (they hit max_new_tokens)."""
    mask = rollout.response_mask.bool()
    lengths = mask.sum(dim=-1)
    last = rollout.response_ids.gather(1, (lengths - 1).clamp(min=0)[:, None])[:, 0]
    ended = (lengths > 0) & (last == eos_token_id)
    return 1.0 - ended.float().mean().item()


# ---------------------------------------------------------------------------------------------------------
# End of the run
# ---------------------------------------------------------------------------------------------------------


def save_actor(engines, tokenizer, config, final_dir: Path) -> None:
    """The actor in Hugging Face format; under ZeRO-3 every rank joins the gather, rank 0 writes."""
    from rlhf.adaptation import save_adapted
    from rlhf.ppo.engines import adaptation_for, zero_stage

    module = engines.actor.module
    gathered = contextlib.nullcontext()
    if zero_stage(engines.actor) == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gathered:
        if distributed.is_main_process():
            save_adapted(module, tokenizer, final_dir, adaptation_for(config, config.adaptation_method))
    distributed.barrier()


def finish(config, inputs, engines, tokenizer, sampling, state: dict[str, Any]):
    """Save, compare with the SFT policy, write metrics.json / samples.json, register. Rank 0 returns the entry."""
    from rlhf.config import config_to_dict, write_resolved_config
    from rlhf.io import atomic_write_json
    from rlhf.ppo.metrics import read_metrics
    from rlhf.registry import fingerprint_files

    output_dir = Path(config.output_dir)
    final_dir = output_dir / "final_model"
    save_actor(engines, tokenizer, config, final_dir)
    if not distributed.is_main_process():
        return None

    history = read_metrics(output_dir)
    metrics: dict[str, Any] = {"steps": config.steps, "skipped_updates": state["skipped_updates"],
                               "kl_final": history[-1]["kl"] if history else None}
    if inputs.eval_prompts:
        comparison, samples = compare_policies(config, inputs, tokenizer, sampling, final_dir)
        metrics.update(comparison)
        atomic_write_json(output_dir / "samples.json", samples)
    write_resolved_config(config, output_dir)
    atomic_write_json(output_dir / "metrics.json", metrics)

    actor_entry, reward_entry = inputs.entries["actor"], inputs.entries["reward"]
    parents = list(dict.fromkeys(e.reference for e in (actor_entry, reward_entry) if e is not None))
    entry = inputs.registry.register(
        config.register_as or "ppo", "ppo", final_dir,
        base_model=(actor_entry.base_model if actor_entry else "") or inputs.paths["actor"], parents=parents,
        data_fingerprint=fingerprint_files([config.prompts_file] + ([config.ptx_file] if config.ptx_coef else [])),
        config=config_to_dict(config), metrics=metrics,
    )
    atomic_write_json(output_dir / "registered.json", {"reference": entry.reference, "path": entry.path})
    return entry


def compare_policies(config, inputs, tokenizer, sampling, final_dir: Path) -> tuple[dict[str, Any], list[dict]]:
    """Win rates of the PPO policy against the reference (SFT) policy on held-out prompts (ties count half)."""
    from rlhf.adaptation import load_adapted
    from rlhf.evaluation import gold_scorer
    from rlhf.reward import load_reward_model, score_texts

    prompts = [p for p in inputs.eval_prompts for _ in range(config.eval_samples_per_prompt)]
    responses = {}
    for name, path in (("sft", inputs.paths["reference"]), ("ppo", str(final_dir))):
        policy = load_adapted(path, task="causal_lm", trust_remote_code=config.trust_remote_code)
        responses[name] = sample_responses(policy, tokenizer, prompts, sampling, config.eval_do_sample, config.seed)
        del policy
    reward_model, reward_tokenizer, normalization = load_reward_model(inputs.paths["reward"],
                                                                      trust_remote_code=config.trust_remote_code)
    rm = {name: score_texts(reward_model, reward_tokenizer, prompts, texts, normalization=normalization,
                            max_length=config.reward_max_length) for name, texts in responses.items()}
    metrics = {"rm_score_sft": fmean(rm["sft"]), "rm_score_ppo": fmean(rm["ppo"]),
               "win_rate_rm": win_rate(rm["ppo"], rm["sft"]), "eval_prompts": len(inputs.eval_prompts),
               "eval_responses": len(prompts)}
    gold_scores = {"sft": [None] * len(prompts), "ppo": [None] * len(prompts)}
    if config.gold_scorer:
        scorer = gold_scorer(config.gold_scorer)
        gold_scores = {name: [scorer(prompt_text(tokenizer, p), r) for p, r in zip(prompts, texts)]
                       for name, texts in responses.items()}
        metrics.update({"gold_score_sft": fmean(gold_scores["sft"]), "gold_score_ppo": fmean(gold_scores["ppo"]),
                        "win_rate_gold": win_rate(gold_scores["ppo"], gold_scores["sft"])})
    samples = [{"prompt": p, "sft": s, "ppo": q, "rm_sft": rs, "rm_ppo": rq, "gold_sft": gs, "gold_ppo": gq}
               for p, s, q, rs, rq, gs, gq in zip(prompts, responses["sft"], responses["ppo"], rm["sft"], rm["ppo"],
                                                  gold_scores["sft"], gold_scores["ppo"])]
    return metrics, samples


def win_rate(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of pairs where the candidate scores higher, a tie counting half."""
    outcomes = [1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline)]
    return fmean(outcomes) if outcomes else float("nan")


def sample_responses(policy, tokenizer, prompts: Sequence[Any], sampling, do_sample: bool, seed: int,
                     batch_size: int = 64) -> list[str]:
    """Responses under the PPO sampling settings (seeded, so both policies draw with the same generator),
    or greedy ones."""
    from rlhf.generation import generate_responses

    torch.manual_seed(seed)
    return generate_responses(policy, tokenizer, prompts, max_new_tokens=sampling.max_new_tokens,
                              do_sample=do_sample, temperature=sampling.temperature, top_k=sampling.top_k,
                              top_p=sampling.top_p, batch_size=batch_size)
