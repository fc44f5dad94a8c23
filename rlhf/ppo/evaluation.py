"""How good the PPO policy is on held-out prompts: along the run, and against the SFT policy at its end.

- Along the run (`HeldOutEvaluation`, every `eval_steps`): the policy answers held-out prompts; their mean
  reward-model score, gold score and KL from the reference are a row of eval_metrics.jsonl. These are PPO's points
  on the report's best-of-N comparison at matched KL (Gao et al. 2022).
- At the end (`final_metrics`): rank 0 samples responses to held-out prompts from the SFT policy and the saved PPO
  policy with the same seed, scores both under the reward model and (on the demo) the gold scorer, and counts how
  often PPO wins (ties count half). The recipe (rlhf.stages.ppo) saves the policy first and registers it after,
  through the shared epilogue.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from rlhf import distributed, run_files
from rlhf.adaptation.checkpoint import load_adapted
from rlhf.data.formatting import prompt_text
from rlhf.evaluation import gold_scorer, pair_outcome, task_of_prompt
from rlhf.generation import generate_responses, stop_token_ids_of
from rlhf.io import atomic_write_json, atomic_write_text
from rlhf.rm.ensemble import member_dirs
from rlhf.run_files import read_jsonl


def final_metrics(
    config, inputs, tokenizer, sampling, state: dict[str, Any], final_dir: Path, engine=None
) -> dict[str, Any]:
    """The run's final metrics (steps, skips, last KL, the estimator, win rates); writes samples.json beside them
    (rank 0). With a vLLM `engine` (rank 0's, rollout_engine vllm) the policies sample there."""
    from rlhf.ppo.tracking import read_metrics

    output_dir = Path(config.output_dir)
    history = read_metrics(output_dir)

    metrics: dict[str, Any] = {
        "steps": config.steps,
        "skipped_updates": state["skipped_updates"],
        "kl_final": history[-1]["kl"] if history else None,
        **estimator_metrics(config),
        "reward_members": len(member_dirs(inputs.paths["reward"])),
    }
    if inputs.eval_prompts:
        comparison, samples = compare_policies(config, inputs, tokenizer, sampling, final_dir, engine)
        metrics.update(comparison)
        atomic_write_json(output_dir / run_files.PPO_SAMPLES, samples)
    return metrics


def estimator_metrics(config) -> dict[str, Any]:
    """How the advantages were estimated and the reward made of an ensemble's scores, for metrics.json, the registry
    entry and the report."""
    return {
        "advantage_estimator": config.advantage_estimator,
        "samples_per_prompt": config.samples_per_prompt,
        "kl_in_loss": config.kl_in_loss,
        "reward_aggregation": config.reward_aggregation,
        **({"uncertainty_coef": config.uncertainty_coef} if config.reward_aggregation == "mean_minus_std" else {}),
    }


def reward_aggregation(config):
    """The config's RewardAggregation (rlhf.ppo.reward_aggregation)."""
    from rlhf.ppo.reward_aggregation import RewardAggregation

    return RewardAggregation(config.reward_aggregation, config.uncertainty_coef)


def compare_policies(
    config, inputs, tokenizer, sampling, final_dir: Path, engine=None
) -> tuple[dict[str, Any], list[dict]]:
    """Win rates of the PPO policy against the reference (SFT) policy on held-out prompts (ties count half); under a
    reward-model ensemble, by its members' mean (`score_texts`), whatever reward_aggregation trained on.

    With a gold scorer, also the gold win rate of the greedy responses (InstructGPT's other claim: PPO's greedy
    response is at least as good as SFT's), when the main comparison samples; and each sample's task label.
    With a vLLM `engine`, each policy is loaded as before and its (merged) weights synced into the engine, which
    samples.
    """
    from rlhf.rm.model import load_reward_model, score_texts

    prompts = [p for p in inputs.eval_prompts for _ in range(config.eval_samples_per_prompt)]
    greedy = bool(config.gold_scorer) and config.eval_do_sample
    responses, greedy_responses = {}, {}
    for name, path in (("sft", inputs.paths["reference"]), ("ppo", str(final_dir))):
        policy = load_adapted(
            path,
            task="causal_lm",
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
        )
        if engine is not None:
            from rlhf.rollout.weights import sync_weights

            sync_weights(engine, policy)
        responses[name] = sample_responses(
            policy, tokenizer, prompts, sampling, config.eval_do_sample, config.seed, engine=engine
        )
        if greedy:
            greedy_responses[name] = sample_responses(
                policy, tokenizer, inputs.eval_prompts, sampling, False, config.seed, engine=engine
            )
        del policy
    reward_model, reward_tokenizer, normalization = load_reward_model(
        inputs.paths["reward"],
        trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
    )
    reward_stops = stop_token_ids_of(inputs.paths["reward"], reward_tokenizer)
    rm = {
        name: score_texts(
            reward_model,
            reward_tokenizer,
            prompts,
            texts,
            normalization=normalization,
            stop_token_ids=reward_stops,
            max_length=config.reward_input_limit,
        )
        for name, texts in responses.items()
    }
    metrics = {
        "rm_score_sft": fmean(rm["sft"]),
        "rm_score_ppo": fmean(rm["ppo"]),
        "win_rate_rm": win_rate(rm["ppo"], rm["sft"]),
        "eval_prompts": len(inputs.eval_prompts),
        "eval_responses": len(prompts),
    }
    gold_scores = {"sft": [None] * len(prompts), "ppo": [None] * len(prompts)}
    tasks = [None] * len(prompts)
    if config.gold_scorer:
        scorer = gold_scorer(config.gold_scorer)
        texts = [prompt_text(tokenizer, p) for p in prompts]
        gold_scores = {name: [scorer(t, r) for t, r in zip(texts, answers)] for name, answers in responses.items()}
        metrics.update(
            {
                "gold_score_sft": fmean(gold_scores["sft"]),
                "gold_score_ppo": fmean(gold_scores["ppo"]),
                "win_rate_gold": win_rate(gold_scores["ppo"], gold_scores["sft"]),
            }
        )
        if greedy:
            greedy_texts = [prompt_text(tokenizer, p) for p in inputs.eval_prompts]
            greedy_gold = {
                name: [scorer(t, r) for t, r in zip(greedy_texts, answers)]
                for name, answers in greedy_responses.items()
            }
            metrics.update(
                {
                    "gold_score_sft_greedy": fmean(greedy_gold["sft"]),
                    "gold_score_ppo_greedy": fmean(greedy_gold["ppo"]),
                    "win_rate_gold_greedy": win_rate(greedy_gold["ppo"], greedy_gold["sft"]),
                }
            )
        task_of = task_of_prompt(config.gold_scorer)
        if task_of is not None:
            tasks = [task_of(t) for t in texts]
    samples = [
        {"prompt": p, "sft": s, "ppo": q, "rm_sft": rs, "rm_ppo": rq, "gold_sft": gs, "gold_ppo": gq, "task": task}
        for p, s, q, rs, rq, gs, gq, task in zip(
            prompts,
            responses["sft"],
            responses["ppo"],
            rm["sft"],
            rm["ppo"],
            gold_scores["sft"],
            gold_scores["ppo"],
            tasks,
        )
    ]
    return metrics, samples


def win_rate(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """Share of pairs where the candidate scores higher, a tie counting half."""
    outcomes = [pair_outcome(c, b) for c, b in zip(candidate, baseline)]
    return fmean(outcomes) if outcomes else float("nan")


def sample_responses(
    policy, tokenizer, prompts: Sequence[Any], sampling, do_sample: bool, seed: int, batch_size: int = 64, engine=None
) -> list[str]:
    """Responses under the PPO sampling settings (seeded, so both policies draw with the same generator),
    or greedy ones; from `engine` (vLLM, holding the policy's weights) when given."""

    if engine is not None:
        from rlhf.rollout.sampling import engine_responses, sampling_for

        settings = sampling_for(
            tokenizer,
            max_new_tokens=sampling.max_new_tokens,
            stop_token_ids=sampling.stops(tokenizer),
            do_sample=do_sample,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        )
        return engine_responses(engine, tokenizer, prompts, settings, seed, batch_size)
    torch.manual_seed(seed)
    return generate_responses(
        policy,
        tokenizer,
        prompts,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=do_sample,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        batch_size=batch_size,
    )


class HeldOutEvaluation:
    """Every `eval_steps` steps, before the first and after the last: the policy's held-out reward-model score,
    gold score (with a gold scorer) and KL from the reference, one row of eval_metrics.jsonl per evaluation.

    Every rank answers its share of the first `eval_steps_prompts` held-out prompts (the same number on each, so
    that ZeRO-3's collectives line up) and the means are taken over ranks; rank 0 writes. The responses are sampled
    as in training, under a fixed seed of their own in a forked RNG: training draws the same numbers with the
    evaluation on or off, and every evaluation samples with the same noise, so that its rows differ by the policy.
    The KL is k1, Σ_t (log π − log π_ref) over a response's tokens (an unbiased estimate of KL(π ‖ π_ref)), whatever
    `kl_estimator` the reward uses. On resume, rows from the checkpoint's step on are dropped, and that step is
    evaluated again when due (the same weights and noise: the same row), so that every rank makes the same calls.
    """

    def __init__(self, config, inputs, tokenizer, sampling, rollouts, gold, start_step: int):

        self.every, self.last_step = config.eval_steps, config.steps
        # The first of the held-out file's prompts that fit, however many the final comparison takes (eval_prompts).
        held_out = next((fitted.kept for name, _, fitted in inputs.fitted if name == "eval_prompts"), [])
        self.prompts = list(held_out[: config.eval_steps_prompts]) if config.eval_steps else []
        self.tokenizer, self.sampling, self.gold = tokenizer, sampling, gold
        self.rollouts = rollouts  # rlhf.ppo.rollouts: the actor's generate or its vLLM engine
        self.reward_input_limit, self.batch_size = config.reward_input_limit, config.rollout_batch_size
        self.forward_batch_size = config.scoring_batch_size
        self.aggregation = reward_aggregation(config)
        self.seed = config.seed * 1_000_003 + 17 + distributed.global_rank()
        self.path = Path(config.output_dir) / run_files.PPO_EVAL_METRICS
        self.writes = distributed.is_main_process()
        if self.prompts and self.writes:
            _keep_rows_before(self.path, start_step)

    def due(self, step: int) -> bool:
        return bool(self.prompts) and (step % self.every == 0 or step == self.last_step)

    def evaluate_if_due(self, step: int, engines) -> dict[str, Any] | None:
        """The row of the policy after `step` steps when an evaluation is due then (written on rank 0), else None.
        Every rank must call it: under ZeRO-3 generation and the forwards are collective."""

        if not self.due(step):
            return None
        row = {
            "step": step,
            **self.measure(engines, _share_of_rank(self.prompts, distributed.global_rank(), distributed.world_size())),
            "prompts": len(self.prompts),
        }
        if self.writes:
            _append_row(self.path, row)
        return row

    def measure(self, engines, prompts: Sequence[Any]) -> dict[str, float]:
        """Mean reward-model score (an ensemble's: aggregated as in training, with its members' mean and std), KL and
        gold score of one sampled response per prompt, over every rank."""
        from rlhf.ppo import experience

        rm, kl, gold, members = [], [], [], []
        for start in range(0, len(prompts), self.batch_size):
            batch = experience.tokenize_prompts(self.tokenizer, prompts[start : start + self.batch_size])
            with _forked_rng(self.seed + start):  # the vLLM engine draws from the seeds it is given instead
                response_ids, _ = self.rollouts.generate(engines.actor, batch, (self.seed, "eval", start))
            rollout = experience.score(
                engines,
                batch,
                response_ids,
                self.tokenizer,
                self.sampling,
                self.reward_input_limit,
                self.forward_batch_size,
                self.aggregation,
            )
            mask = rollout.response_mask.bool()
            kl += ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(dim=-1).tolist()
            rm += rollout.scores.float().tolist()
            if rollout.member_scores is not None:
                members.append(rollout.member_scores)
            if self.gold is not None:
                texts = experience.decode_responses(self.tokenizer, batch, rollout.response_ids, rollout.response_mask)
                gold += [self.gold(prompt_text(self.tokenizer, p), t) for p, t in zip(batch.prompts, texts)]
        values = {"rm_score": fmean(rm), "kl": fmean(kl)}
        if members:
            from rlhf.ppo.tracking import ensemble_member_metrics

            values.update(ensemble_member_metrics(torch.cat(members)))
        if self.gold is not None:
            values["gold_score"] = fmean(gold)
        return distributed.mean_over_ranks(values)


def _share_of_rank(prompts: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank `rank`'s ceil(n / world_size) consecutive prompts, wrapping round, so that every rank has as many."""
    per_rank = -(-len(prompts) // world_size)
    return [prompts[(rank * per_rank + i) % len(prompts)] for i in range(per_rank)]


@contextlib.contextmanager
def _forked_rng(seed: int) -> Iterator[None]:
    """torch's CPU (and current CUDA device's) generator seeded with `seed` for the block, then put back."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _keep_rows_before(path: Path, step: int) -> None:
    """`path` without its rows from `step` on (a resumed run's checkpoint step: they are evaluated again)."""

    if path.is_file():
        kept = [row for row in read_jsonl(path) if row["step"] < step]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def _append_row(path: Path, row: dict[str, Any]) -> None:

    clean = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in row.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(clean) + "\n")
