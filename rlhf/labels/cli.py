"""Human labels in and out of the pipeline (`python -m rlhf.labels`).

    python -m rlhf.labels import --format label_studio export.json -o rankings.jsonl [--merge-annotators]
        [--option KEY=VALUE ...]
    python -m rlhf.labels export --policy sft --prompts prompts.jsonl --k 4 --format label-studio -o tasks.json

`import` reads a labeling tool's export (or a public preference dataset) into the canonical rankings JSONL that
the reward-model stage trains on (see rlhf.data.rankings). Every record left out goes to
`<output>.quarantine.jsonl` with its source file, record number and reason, and the summary counts them. Nothing is
written unless rankings were imported; then the two files are written as a pair (rlhf.io.write_files_together), so
that a rankings file always sits beside the quarantine of its own import. Each
subcommand is one `add_<name>_command` function below; `export` (sample K completions per prompt from a policy,
then hand them to rlhf.labels.exporters) closes InstructGPT's loop: sample from the SFT policy, people rank the
samples in their tool, `import` brings the rankings back for the reward model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhf.data.overlong import POLICIES as OVERLONG_POLICIES
from rlhf.data.overlong import fit_prompts
from rlhf.data.prompts import load_prompts
from rlhf.errors import ConfigError, DataError, exits_cleanly
from rlhf.io import check_output_file, jsonl_lines, write_files_together
from rlhf.labels.agreement import labeler_agreement
from rlhf.labels.importers import IMPORTERS, ImportReport, import_rankings, importer_options
from rlhf.labels.sampling import rankable, sample_k_responses, write_labeling_tasks
from rlhf.models import load_tokenizer, max_positions
from rlhf.rollout.settings import ENGINES, ROLLOUT_ENGINE_HELP, vllm_python

FLAGGED_IDS_SHOWN = 5


def quarantine_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".quarantine.jsonl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf.labels", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_import_command(subcommands)
    add_export_command(subcommands)
    return parser


def add_import_command(subcommands) -> None:
    command = subcommands.add_parser(
        "import",
        help="a labeling tool's export -> rankings JSONL",
        description="Read a labeling export into rankings JSONL.",
    )
    command.add_argument(
        "--format",
        required=True,
        choices=sorted(IMPORTERS),
        type=_format_name,
        help="the tool or dataset (label-studio and label_studio are the same)",
    )
    command.add_argument("inputs", nargs="+", metavar="INPUT", help="export files (or `datasets` directories)")
    command.add_argument("-o", "--output", required=True, help="rankings JSONL to write")
    command.add_argument(
        "--merge-annotators",
        action="store_true",
        help="merge rankings of the same completions by several annotators (mean rank)",
    )
    command.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="importer option, e.g. prompt_field=question (see each importer's docstring)",
    )
    command.set_defaults(run=run_import)


def _format_name(text: str) -> str:
    return text.replace("-", "_")


def run_import(args: argparse.Namespace) -> int:
    options = _options(args.option, args.format)
    quarantine = quarantine_path(args.output)
    for output in (args.output, quarantine):
        check_output_file(output)
    report = import_rankings(args.format, args.inputs, merge_annotators=args.merge_annotators, **options)
    if not report.rankings:
        # Nothing is written: an old rankings file keeps the quarantine that describes it.
        raise DataError(
            f"no rankings imported from {report.records_read} records, so nothing was written; left "
            f"out: {_reasons(report)}",
            file=args.output,
        )
    write_files_together(
        {
            args.output: jsonl_lines(ranking.to_dict() for ranking in report.rankings),
            quarantine: jsonl_lines(report.quarantine),
        }
    )
    print(format_summary(report, args.format, args.output, quarantine))
    return 0


def _reasons(report: ImportReport, shown: int = 3) -> str:
    """The commonest reasons records were left out, with their counts, for a one-line error."""
    counts = report.skipped.most_common()
    if not counts:
        return "nothing, the inputs hold no records"
    return "; ".join(f"{n} {reason}" for reason, n in counts[:shown]) + ("; ..." if len(counts) > shown else "")


EXPORT_FORMATS = ("label-studio", "argilla")


def add_export_command(subcommands) -> None:
    command = subcommands.add_parser(
        "export",
        help="sample K responses per prompt -> labeling tasks",
        description="Sample K responses per prompt from a policy and write tasks "
        "for a labeling tool, with its labeling config beside them.",
    )
    command.add_argument("--policy", default="sft", help="registry reference, directory or hub id (default: sft)")
    command.add_argument("--prompts", required=True, help="JSONL/JSON/CSV records with a 'prompt' field")
    command.add_argument("--k", type=int, default=4, help="responses sampled per prompt (InstructGPT: 4 to 9)")
    command.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    command.add_argument("-o", "--output", required=True, help="tasks file to write (config written beside it)")
    command.add_argument("--limit", type=int, default=0, help="use only the first N prompts (0: all)")
    command.add_argument("--max_new_tokens", type=int, default=64)
    command.add_argument("--temperature", type=float, default=1.0)
    command.add_argument("--top_p", type=float, default=1.0)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument(
        "--batch_size",
        type=int,
        default=128,
        help="responses generated at once (the same samples need the same batch size and seed)",
    )
    command.add_argument(
        "--max_prompt_length",
        type=int,
        default=0,
        help="prompt length cap in tokens (0: the policy's max_position_embeddings minus max_new_tokens)",
    )
    command.add_argument(
        "--overlong",
        choices=OVERLONG_POLICIES,
        default="drop",
        help="prompts over max_prompt_length: drop, truncate (from the left, at a turn boundary where it can) or error",
    )
    command.add_argument("--registry_dir", default="", help="registry root (default $RLHF_REGISTRY or runs/registry)")
    command.add_argument("--trust_remote_code", action="store_true")
    command.add_argument("--rollout_engine", choices=ENGINES, default="hf", help=ROLLOUT_ENGINE_HELP)
    command.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:

    check_output_file(args.output)  # before sampling, which takes minutes
    if not 2 <= args.k <= 16:
        raise ConfigError(f"--k must be between 2 and 16, got {args.k}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.rollout_engine == "vllm":
        vllm_python()  # installed, or one line now rather than after the prompts are read
    prompts = fitted_prompts(args, load_prompts(args.prompts)[: args.limit or None])
    items = sample_k_responses(
        args.policy,
        prompts,
        k=args.k,
        registry_dir=args.registry_dir,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        trust_remote_code=args.trust_remote_code,
        rollout_engine=args.rollout_engine,
    )
    items, dropped = rankable(items)
    if args.format == "argilla":
        # Argilla fixes a ranking question's options per dataset: every record needs all K responses.
        complete = [(prompt, responses) for prompt, responses in items if len(responses) == args.k]
        if len(complete) < len(items):
            dropped[f"prompts with fewer than {args.k} distinct responses (Argilla needs K per record)"] = len(
                items
            ) - len(complete)
        items = complete
    if not items:
        raise DataError(f"no prompt got 2 distinct non-empty responses from {args.policy}", file=args.prompts)
    tasks, config = write_labeling_tasks(items, args.format, args.output, seed=args.seed)
    print(f"wrote {len(items)} tasks with up to {args.k} responses each to {tasks}; labeling config: {config}")
    for reason, count in dropped.items():
        print(f"left out {count} {reason}")
    return 0


def fitted_prompts(args: argparse.Namespace, prompts: list) -> list:
    """The prompts that fit the policy (`--max_prompt_length`), after the `--overlong` policy; says what it did."""
    from rlhf.registry import Registry, resolve_model

    path, _ = resolve_model(args.policy, Registry(args.registry_dir or None))
    tokenizer = load_tokenizer(path, trust_remote_code=args.trust_remote_code)
    limit = args.max_prompt_length or max_positions(path, args.trust_remote_code) - args.max_new_tokens
    if limit < 1:
        raise ConfigError(f"--max_prompt_length {limit} leaves no room for a prompt; lower --max_new_tokens")
    fitted = fit_prompts(
        prompts, tokenizer, max_tokens=limit, setting="max_prompt_length", policy=args.overlong, file=args.prompts
    )
    if fitted.over:
        print(f"{args.prompts}: {fitted.summary()}")
    return fitted.kept


def _options(pairs: list[str], format: str) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ConfigError(
                f"--option {pair!r} must read KEY=VALUE (options of {format}: "
                f"{', '.join(importer_options(format)) or 'none'})"
            )
        options[key.strip()] = value.strip()
    return options


def format_summary(report: ImportReport, format: str, output, quarantine) -> str:
    lines = [
        f"read {report.records_read} records ({format})",
        f"wrote {len(report.rankings)} rankings to {output}",
        "K histogram: " + ", ".join(f"K={k}: {n}" for k, n in report.k_histogram().items()),
        "annotators: " + ", ".join(f"{name}: {n}" for name, n in report.annotators().most_common()),
    ]
    if report.skipped:
        lines.append(f"left out {sum(report.skipped.values())} (details in {quarantine}):")
        lines += [f"  {n:6d}  {reason}" for reason, n in report.skipped.most_common()]
    else:
        lines.append("left out nothing")
    for flag, ids in report.flagged.items():
        shown = ", ".join(ids[:FLAGGED_IDS_SHOWN]) + (", ..." if len(ids) > FLAGGED_IDS_SHOWN else "")
        lines.append(f"flagged {len(ids)}: {flag} (ids: {shown})")
    if report.duplicates_merged:
        lines.append(f"merged duplicate completions in {report.duplicates_merged} rankings")
    if report.annotator_merge:
        before, after, cancelled = report.annotator_merge
        lines.append(f"merged annotators: {before} rankings -> {after}, {cancelled} groups cancelled out")
    return "\n".join(lines + agreement_lines(report.rankings))


ANNOTATORS_SHOWN = 10


def agreement_lines(rankings) -> list[str]:
    """How much the annotators agree where several ranked the same responses (rlhf.labels.agreement); nothing
    when no two annotators' rankings overlap."""

    agreement = labeler_agreement(rankings)
    if not agreement.shared_pairs:
        return []
    people = list(agreement.by_annotator.items())
    shown = ", ".join(f"{name}: {value:.3f} ({pairs})" for name, (value, pairs) in people[:ANNOTATORS_SHOWN])
    return [
        f"labeler agreement: pairwise {agreement.pairwise:.3f} on {agreement.shared_pairs} response pairs that "
        f"two annotators both ranked ({agreement.sets} prompts' responses ranked by several), Krippendorff's "
        f"alpha (ordinal) {agreement.alpha:.3f}",
        f"agreement with the others by annotator (pairs): {shown}"
        + (", ..." if len(people) > ANNOTATORS_SHOWN else ""),
    ]


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
