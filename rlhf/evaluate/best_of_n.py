"""Best-of-N of a policy under a reward model, every N from one set of samples (Gao et al. 2022, §2).

For each prompt, M = max(N) responses are sampled once from the policy (rlhf.labels.sampling, the sampler the
labels use; responses decoded in context) and scored by the reward model (rlhf.rm.model.score_texts, reading what
`reward_input_ids` gives it, with the reward model's stop tokens) and, where there is one, the gold scorer.
Best-of-N keeps the response the reward model scores highest. Every N ≤ M is read off the same M samples as the
mean over all N-subsets of them (`best_of_n_expectation`): the N share their samples, and each is unbiased. Its KL
from the policy is the analytic log N − (N − 1)/N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rlhf.evaluate.overoptimisation import best_of_n_curve, curve_fits
from rlhf.models import load_tokenizer


@dataclass(frozen=True)
class Sampling:
    """How the policy samples: best-of-N's KL is from this distribution, so it should be PPO's."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 128  # responses generated at once (the same samples need the same batch size and seed)
    rollout_engine: str = "hf"  # or vllm (rlhf.rollout): the engine that samples


def best_of_n(
    policy: str,
    reward_model: str,
    prompts: Sequence[Any],
    ns: Sequence[int],
    *,
    sampling: Sampling,
    gold_scorer: str = "",
    registry_dir: str = "",
    reward_max_length: int = 512,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The best-of-N curve of `policy` under `reward_model` on `prompts`, as written to best_of_n.json: the
    settings, one point per N (n, kl, d, rm_score, gold_score), Gao's best-of-N fit of each score, and every
    sample's scores (rm_scores[p][i], gold_scores[p][i]) for a later look."""
    from rlhf.evaluation import gold_scorer as named_scorer
    from rlhf.generation import stop_token_ids_of
    from rlhf.labels.sampling import sample_k_responses
    from rlhf.registry import Registry, resolve_model
    from rlhf.rm.model import load_reward_model, score_texts

    ns = sorted(set(ns))
    samples = max(ns)
    sampled = sample_k_responses(
        policy,
        list(prompts),
        k=samples,
        registry_dir=registry_dir,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        seed=sampling.seed,
        batch_size=sampling.batch_size,
        trust_remote_code=trust_remote_code,
        rollout_engine=sampling.rollout_engine,
    )
    registry = Registry(registry_dir or None)
    policy_path, _ = resolve_model(policy, registry)
    reward_path, _ = resolve_model(reward_model, registry)
    model, tokenizer, normalization = load_reward_model(reward_path, trust_remote_code=trust_remote_code)
    flat_prompts = [prompt for prompt, responses in sampled for _ in responses]
    flat_responses = [response for _, responses in sampled for response in responses]
    flat_rm = score_texts(
        model,
        tokenizer,
        flat_prompts,
        flat_responses,
        normalization=normalization,
        stop_token_ids=stop_token_ids_of(reward_path, tokenizer),
        max_length=reward_max_length,
    )
    rm_scores = _rows(flat_rm, samples)
    gold_scores = None
    if gold_scorer:
        from rlhf.data.formatting import prompt_text

        scorer, policy_tokenizer = named_scorer(gold_scorer), load_tokenizer(policy_path, trust_remote_code)
        gold_scores = _rows(
            [scorer(prompt_text(policy_tokenizer, p), r) for p, r in zip(flat_prompts, flat_responses)], samples
        )
    points = best_of_n_curve(rm_scores, gold_scores, ns)
    return {
        "policy": policy,
        "policy_path": policy_path,
        "reward_model": reward_model,
        "reward_model_path": reward_path,
        "gold_scorer": gold_scorer or None,
        "prompts": len(sampled),
        "samples_per_prompt": samples,
        "sampling": asdict(sampling),
        "estimator": "mean over every N-subset of the samples of each prompt",
        "points": points,
        "fits": {key: asdict(fit) if fit else None for key, fit in curve_fits("best_of_n", points).items()},
        "rm_scores": rm_scores,
        "gold_scores": gold_scores,
    }


def _rows(flat: Sequence[float], width: int) -> list[list[float]]:
    return [list(flat[start : start + width]) for start in range(0, len(flat), width)]


def format_result(result: dict[str, Any]) -> str:
    """The curve as a table, then each fit of Gao's best-of-N form with its quality."""
    gold = result["gold_scorer"] is not None
    lines = [
        f"best-of-N of {result['policy']} under {result['reward_model']}: {result['prompts']} prompts, "
        f"{result['samples_per_prompt']} samples each",
        f"{'N':>4} {'KL':>7} {'d':>6} {'RM score':>9}" + (f" {'gold':>7}" if gold else ""),
    ]
    for point in result["points"]:
        lines.append(
            f"{point['n']:>4} {point['kl']:>7.3f} {point['d']:>6.3f} {point['rm_score']:>9.4f}"
            + (f" {point['gold_score']:>7.4f}" if gold else "")
        )
    lines.append("Gao et al.'s best-of-N form R(d) = d (alpha - beta d), R the gain over N = 1:")
    for key, fit in result["fits"].items():
        if fit is None:
            lines.append(f"  {key}: too few N to fit")
        else:
            lines.append(
                f"  {key}: alpha {fit['alpha']:.4f}, beta {fit['beta']:.4f}, R^2 {fit['r_squared']:.3f}, "
                f"RMSE {fit['rmse']:.4f} over {fit['points']} points"
            )
    return "\n".join(lines)
