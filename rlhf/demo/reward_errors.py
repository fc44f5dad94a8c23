"""Where the demo's reward model disagrees with the gold scorer, by task and by the kind of pair.

    python -m rlhf.demo.reward_errors RUN_DIR

Reads the RM stage's resolved config and registered model under RUN_DIR/rm, takes the same held-out rankings the
stage evaluated, and names each response by what it is: "ok" (the right answer), "perm" (the right words in
another order), "slip" (a wrong, missing or extra word), each with "chat+" in front when chatter precedes it.
Every pair that gold orders is counted under (task, "better > worse") with whether the RM's scores order it the
same way (a tie counts half, as in the stage's gold agreement). A high overall agreement can hide a kind of pair
the RM gets wrong every time; this table shows it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from rlhf import run_files
from rlhf.data.rankings import Ranking, ordered_pairs, ranks_from_scores
from rlhf.demo.task import CHATTER, correct_answer, gold_score, parse_prompt
from rlhf.errors import exits_cleanly
from rlhf.evaluation import pair_outcome
from rlhf.rm.data import load_ranking_splits
from rlhf.rm.evaluation import score_rankings
from rlhf.rm.model import load_reward_model

PairCounts = dict[tuple[str, str], list[float]]  # (task, "better > worse") -> [agreed, pairs]


def response_kind(prompt_text: str, response: str) -> str:
    """'ok', 'perm' or 'slip', prefixed 'chat+' when the response opens with one of the demo's chatter phrases."""
    text = response.strip()
    chatter = next((phrase for phrase in CHATTER if text.startswith(phrase)), None)
    said = (text[len(chatter) :] if chatter else text).split()
    answer = correct_answer(parse_prompt(prompt_text))
    kind = "ok" if said == answer else "perm" if sorted(said) == sorted(answer) else "slip"
    return f"chat+{kind}" if chatter else kind


def agreement_by_pair_kind(rankings: Sequence[Ranking], scores: Sequence[Sequence[float]]) -> PairCounts:
    """For each ranking's pairs that gold orders: [RM agreements, pairs] per (task, 'better > worse')."""
    counts: PairCounts = defaultdict(lambda: [0.0, 0])
    for ranking, rewards in zip(rankings, scores):
        gold = [gold_score(ranking.prompt, c) for c in ranking.completions]
        kinds = [response_kind(ranking.prompt, c) for c in ranking.completions]
        task = parse_prompt(ranking.prompt).operation
        for better, worse in ordered_pairs(ranks_from_scores(gold)):
            count = counts[(task, f"{kinds[better]} > {kinds[worse]}")]
            count[0] += pair_outcome(rewards[better], rewards[worse])
            count[1] += 1
    return dict(counts)


def markdown(counts: PairCounts, min_pairs: int = 5) -> str:
    """Kinds of pair with at least `min_pairs` pairs, worst agreement first, then each task's and the total."""
    lines = ["| task | better > worse (gold) | RM agrees | pairs |", "|---|---|---:|---:|"]
    shown = [(key, value) for key, value in counts.items() if value[1] >= min_pairs]
    for (task, pair), (agreed, total) in sorted(shown, key=lambda item: (item[1][0] / item[1][1], item[0])):
        lines.append(f"| {task} | {pair} | {agreed / total:.2f} | {total} |")
    by_task: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for (task, _), (agreed, total) in counts.items():
        by_task[task][0] += agreed
        by_task[task][1] += total
    for task, (agreed, total) in sorted(by_task.items()):
        lines.append(f"| {task} | every pair | {agreed / total:.3f} | {total} |")
    agreed, total = sum(v[0] for v in by_task.values()), sum(v[1] for v in by_task.values())
    lines.append(f"| all | every pair | {agreed / max(total, 1):.3f} | {total} |")
    return "\n".join(lines)


def held_out_scores(rm_dir: Path) -> tuple[list[Ranking], list[list[float]]]:
    """The RM stage's held-out rankings and its registered model's scores of them."""
    from rlhf.config import parse_config
    from rlhf.rm.config import RMStageConfig

    config = parse_config(RMStageConfig, ["--config", str(rm_dir / run_files.RESOLVED_CONFIG)])
    _, held_out = load_ranking_splits(config)
    model_dir = run_files.registered(rm_dir)["path"]
    model, tokenizer, normalization = load_reward_model(model_dir, trust_remote_code=config.trust_remote_code)
    return held_out, score_rankings(model, tokenizer, held_out, normalization, config.max_length)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf.demo.reward_errors", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a pipeline run directory with the RM stage's output in rm/")
    parser.add_argument("--min_pairs", type=int, default=5, help="leave out kinds of pair with fewer pairs")
    args = parser.parse_args(argv)
    rankings, scores = held_out_scores(Path(args.run_dir) / "rm")
    print(markdown(agreement_by_pair_kind(rankings, scores), args.min_pairs))


if __name__ == "__main__":
    main()
