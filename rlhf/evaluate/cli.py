"""The evaluations' command line (`python -m rlhf.evaluate`).

    python -m rlhf.evaluate best-of-n --run_dir runs/demo-run
    python -m rlhf.evaluate best-of-n --policy sft --reward_model rm --prompts eval.jsonl -o best_of_n.json \
        [--n 1 2 4 8 16 32 64] [--limit 32] [--gold_scorer demo]

`best-of-n` samples max(N) responses per held-out prompt once, keeps the reward model's favourite of every N of
them (rlhf.evaluate.best_of_n), prints the curve with Gao et al.'s fit, and writes it as JSON. With `--run_dir`, a
run's PPO stage supplies what is not given: its SFT policy and reward model, its held-out prompts
(`eval_prompts_file`), its sampling settings (so that best-of-N's KL is from the distribution PPO's KL is from),
its gold scorer, and the registry; the result goes to RUN_DIR/evaluation/best_of_n.json, where the report finds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rlhf import run_files
from rlhf.data.overlong import POLICIES as OVERLONG_POLICIES
from rlhf.errors import ConfigError, exits_cleanly
from rlhf.evaluate.best_of_n import Sampling, best_of_n, format_result
from rlhf.io import atomic_write_json
from rlhf.models import max_positions
from rlhf.rollout.settings import ENGINES, ROLLOUT_ENGINE_HELP

DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64)
MOST_SAMPLES = 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf.evaluate", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_best_of_n_command(subcommands)
    return parser


def add_best_of_n_command(subcommands) -> None:
    command = subcommands.add_parser(
        "best-of-n",
        help="best-of-N of a policy under a reward model, at every N",
        description="Best-of-N sampling at matched KL (Gao et al. 2022).",
    )
    given = "default: the run's PPO setting with --run_dir, else %(default)s"
    command.add_argument(
        "--run_dir",
        default="",
        help="a pipeline run: settings from its PPO stage, output to RUN_DIR/evaluation/best_of_n.json",
    )
    command.add_argument(
        "--policy",
        help="policy to sample: registry reference, directory or hub id (default: the "
        "run's PPO reference policy, else sft)",
    )
    command.add_argument(
        "--reward_model", help="reward model that picks (default: the run's PPO reward model, else rm)"
    )
    command.add_argument(
        "--prompts", help="held-out prompts, records with a 'prompt' (default: the run's PPO eval_prompts_file)"
    )
    command.add_argument("--limit", type=int, default=32, help="use the first N prompts (0: all; default %(default)s)")
    command.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=list(DEFAULT_NS),
        help="the N of best-of-N; max(N) responses are sampled per prompt (default 1 2 4 ... 64)",
    )
    command.add_argument(
        "--gold_scorer", help="gold scorer name ('demo') for the gold curve (" + given % {"default": "none"} + ")"
    )
    command.add_argument(
        "-o",
        "--output",
        default="",
        help="JSON file to write (default with --run_dir: RUN_DIR/evaluation/best_of_n.json)",
    )
    command.add_argument("--max_new_tokens", type=int, help=given % {"default": 32})
    command.add_argument("--temperature", type=float, help=given % {"default": 1.0})
    command.add_argument("--top_k", type=int, help=given % {"default": 0})
    command.add_argument("--top_p", type=float, help=given % {"default": 1.0})
    command.add_argument("--seed", type=int, help=given % {"default": 0})
    command.add_argument("--batch_size", type=int, default=128, help="responses generated at once")
    command.add_argument(
        "--max_prompt_length",
        type=int,
        help="prompt length cap in tokens ("
        + given % {"default": "0: the policy's max_position_embeddings minus max_new_tokens"}
        + ")",
    )
    command.add_argument(
        "--overlong",
        choices=OVERLONG_POLICIES,
        default="drop",
        help="prompts over max_prompt_length: drop, truncate or error",
    )
    command.add_argument(
        "--registry_dir",
        default="",
        help="registry root (default: RUN_DIR/registry with --run_dir, else $RLHF_REGISTRY or runs/registry)",
    )
    command.add_argument("--trust_remote_code", action="store_true")
    command.add_argument(
        "--rollout_engine", choices=ENGINES, help=ROLLOUT_ENGINE_HELP + " (" + given % {"default": "hf"} + ")"
    )
    command.set_defaults(run=run_best_of_n)


# What a run's PPO stage supplies, by its config keys: (argument, PPO key, default without a run).
FROM_PPO = (
    ("policy", "reference_model", "sft"),
    ("reward_model", "reward_model", "rm"),
    ("prompts", "eval_prompts_file", ""),
    ("gold_scorer", "gold_scorer", ""),
    ("max_new_tokens", "max_new_tokens", 32),
    ("temperature", "temperature", 1.0),
    ("top_k", "top_k", 0),
    ("top_p", "top_p", 1.0),
    ("seed", "seed", 0),
    ("max_prompt_length", "max_prompt_length", 0),
    ("rollout_engine", "rollout_engine", "hf"),
)


def settings_from_run(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with every setting left out filled from the run's PPO config (RUN_DIR/ppo/resolved_config.yaml), or
    from the defaults; the registry and output path from the run directory."""
    from rlhf.config import load_yaml

    ppo: dict[str, Any] = {}
    if args.run_dir:
        resolved = Path(args.run_dir) / "ppo" / run_files.RESOLVED_CONFIG
        ppo = load_yaml(resolved) if resolved.is_file() else {}
        if not ppo.get("reference_model"):  # empty: the actor's start
            ppo["reference_model"] = ppo.get("model_name_or_path")
        if not args.registry_dir and (Path(args.run_dir) / "registry").is_dir():
            args.registry_dir = str(Path(args.run_dir) / "registry")
        args.output = args.output or str(run_files.best_of_n_path(args.run_dir))
    for name, key, default in FROM_PPO:
        if getattr(args, name) is None:
            setattr(args, name, ppo.get(key) if ppo.get(key) not in (None, "") else default)
    return args


def run_best_of_n(args: argparse.Namespace) -> int:
    from rlhf.data.prompts import load_prompts
    from rlhf.labels.cli import fitted_prompts

    args = settings_from_run(args)
    if not args.output:
        raise ConfigError("best-of-n needs --output, or --run_dir to write RUN_DIR/evaluation/best_of_n.json")
    if not args.prompts:
        raise ConfigError("best-of-n needs --prompts, or --run_dir of a run whose PPO stage has eval_prompts_file")
    if min(args.n) < 1 or max(args.n) > MOST_SAMPLES:
        raise ConfigError(f"--n must be between 1 and {MOST_SAMPLES}, got {' '.join(map(str, args.n))}")
    if args.limit < 0 or args.batch_size < 1:
        raise ConfigError("--limit must be >= 0 and --batch_size >= 1")
    prompts = fitted_prompts(args, load_prompts(args.prompts)[: args.limit or None])
    if not prompts:
        raise ConfigError(f"{args.prompts}: no prompt fits max_prompt_length")
    sampling = Sampling(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.batch_size, args.rollout_engine
    )
    result = best_of_n(
        args.policy,
        args.reward_model,
        prompts,
        args.n,
        sampling=sampling,
        gold_scorer=args.gold_scorer,
        registry_dir=args.registry_dir,
        reward_max_length=_longest_prompt(args) + args.max_new_tokens + 1,
        trust_remote_code=args.trust_remote_code,
    )
    result["prompts_file"] = args.prompts
    atomic_write_json(args.output, result)
    print(format_result(result))
    print(f"wrote {args.output}")
    return 0


def _longest_prompt(args: argparse.Namespace) -> int:
    """The prompt length cap `fitted_prompts` applied, so that the reward model reads every prompt whole."""
    if args.max_prompt_length:
        return args.max_prompt_length
    from rlhf.registry import Registry, resolve_model

    path, _ = resolve_model(args.policy, Registry(args.registry_dir or None))
    return max_positions(path, args.trust_remote_code) - args.max_new_tokens


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
