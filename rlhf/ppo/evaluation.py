"""How good the PPO policy is against the SFT policy: win rates on held-out prompts, at the end of a run.

Rank 0 samples responses to held-out prompts from the SFT policy and the saved PPO policy with the same seed,
scores both under the reward model and (on the demo) the gold scorer, and counts how often PPO wins (ties count
half). The recipe (rlhf.stages.ppo) saves the policy first and registers it after, through the shared epilogue.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

import torch

from rlhf import run_files
from rlhf.data.formatting import prompt_text


def final_metrics(config, inputs, tokenizer, sampling, state: dict[str, Any], final_dir: Path) -> dict[str, Any]:
    """The run's final metrics (steps, skips, last KL, the estimator, win rates); writes samples.json beside them
    (rank 0)."""
    from rlhf.io import atomic_write_json
    from rlhf.ppo.tracking import read_metrics

    output_dir = Path(config.output_dir)
    history = read_metrics(output_dir)
    metrics: dict[str, Any] = {"steps": config.steps, "skipped_updates": state["skipped_updates"],
                               "kl_final": history[-1]["kl"] if history else None, **estimator_metrics(config)}
    if inputs.eval_prompts:
        comparison, samples = compare_policies(config, inputs, tokenizer, sampling, final_dir)
        metrics.update(comparison)
        atomic_write_json(output_dir / run_files.PPO_SAMPLES, samples)
    return metrics


def estimator_metrics(config) -> dict[str, Any]:
    """How the advantages were estimated, for metrics.json, the registry entry and the report."""
    return {"advantage_estimator": config.advantage_estimator, "samples_per_prompt": config.samples_per_prompt,
            "kl_in_loss": config.kl_in_loss}


def compare_policies(config, inputs, tokenizer, sampling, final_dir: Path) -> tuple[dict[str, Any], list[dict]]:
    """Win rates of the PPO policy against the reference (SFT) policy on held-out prompts (ties count half).

    With a gold scorer, also the gold win rate of the greedy responses (InstructGPT's other claim: PPO's greedy
    response is at least as good as SFT's), when the main comparison samples; and each sample's task label.
    """
    from rlhf.adaptation import load_adapted
    from rlhf.evaluation import gold_scorer, task_of_prompt
    from rlhf.generation import stop_token_ids_of
    from rlhf.rm.model import load_reward_model, score_texts

    prompts = [p for p in inputs.eval_prompts for _ in range(config.eval_samples_per_prompt)]
    greedy = bool(config.gold_scorer) and config.eval_do_sample
    responses, greedy_responses = {}, {}
    for name, path in (("sft", inputs.paths["reference"]), ("ppo", str(final_dir))):
        policy = load_adapted(path, task="causal_lm", trust_remote_code=config.trust_remote_code,
                              attn_implementation=config.attn_implementation)
        responses[name] = sample_responses(policy, tokenizer, prompts, sampling, config.eval_do_sample, config.seed)
        if greedy:
            greedy_responses[name] = sample_responses(policy, tokenizer, inputs.eval_prompts, sampling, False,
                                                      config.seed)
        del policy
    reward_model, reward_tokenizer, normalization = load_reward_model(
        inputs.paths["reward"], trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation)
    reward_stops = stop_token_ids_of(inputs.paths["reward"], reward_tokenizer)
    rm = {name: score_texts(reward_model, reward_tokenizer, prompts, texts, normalization=normalization,
                            stop_token_ids=reward_stops, max_length=config.reward_input_limit)
          for name, texts in responses.items()}
    metrics = {"rm_score_sft": fmean(rm["sft"]), "rm_score_ppo": fmean(rm["ppo"]),
               "win_rate_rm": win_rate(rm["ppo"], rm["sft"]), "eval_prompts": len(inputs.eval_prompts),
               "eval_responses": len(prompts)}
    gold_scores = {"sft": [None] * len(prompts), "ppo": [None] * len(prompts)}
    tasks = [None] * len(prompts)
    if config.gold_scorer:
        scorer = gold_scorer(config.gold_scorer)
        texts = [prompt_text(tokenizer, p) for p in prompts]
        gold_scores = {name: [scorer(t, r) for t, r in zip(texts, answers)] for name, answers in responses.items()}
        metrics.update({"gold_score_sft": fmean(gold_scores["sft"]), "gold_score_ppo": fmean(gold_scores["ppo"]),
                        "win_rate_gold": win_rate(gold_scores["ppo"], gold_scores["sft"])})
        if greedy:
            greedy_texts = [prompt_text(tokenizer, p) for p in inputs.eval_prompts]
            greedy_gold = {name: [scorer(t, r) for t, r in zip(greedy_texts, answers)]
                           for name, answers in greedy_responses.items()}
            metrics.update({"gold_score_sft_greedy": fmean(greedy_gold["sft"]),
                            "gold_score_ppo_greedy": fmean(greedy_gold["ppo"]),
                            "win_rate_gold_greedy": win_rate(greedy_gold["ppo"], greedy_gold["sft"])})
        task_of = task_of_prompt(config.gold_scorer)
        if task_of is not None:
            tasks = [task_of(t) for t in texts]
    samples = [{"prompt": p, "sft": s, "ppo": q, "rm_sft": rs, "rm_ppo": rq, "gold_sft": gs, "gold_ppo": gq,
                "task": task}
               for p, s, q, rs, rq, gs, gq, task in zip(prompts, responses["sft"], responses["ppo"], rm["sft"],
                                                        rm["ppo"], gold_scores["sft"], gold_scores["ppo"], tasks)]
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
