"""What every stage does before its algorithm: parse its command line, resolve its inputs, load what it trains.

Kept apart, with rlhf.stages.epilogue, so that each stage file reads as its algorithm and nothing else.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf import _compat, distributed, host_memory, run_lock
from rlhf.data.overlong import OVERLONG_FILE, write_overlong
from rlhf.models import load_tokenizer
from rlhf.registry import Entry, Registry, resolve_model

# What Ctrl-C leaves of a stage, and how to go on.
STAGE_INTERRUPTED = (
    "the stage stopped; run the same command with --resume true to continue from its last "
    "checkpoint (SIGTERM instead saves one before stopping)"
)


def run_from_command_line(config_class: type, run: Callable[[Any], Entry | None], argv: list[str] | None) -> None:
    """What `python -m rlhf.stages.<stage>` does: config from YAML and flags, the run (holding output_dir, so that
    no other run writes there meanwhile), the registered entry printed."""
    from rlhf.config import parse_config

    try:
        config = parse_config(config_class, argv)
        with output_dir_held(config):
            entry = run(config)
        distributed.finish_pending_work()
    finally:
        distributed.shutdown()
    if entry is not None:
        print(json.dumps({"registered": entry.reference, "path": entry.path, "metrics": entry.metrics}, indent=2))
    distributed.exit_after_success()


def output_dir_held(config):
    """The lock on the stage's output_dir, for the whole run. Global rank 0 holds it for its job: the other ranks
    (on every node) write only inside the run that rank 0 holds, and another job's rank 0 is refused, which ends
    that job before its other ranks get past their first collective."""
    if not distributed.is_main_process():
        return contextlib.nullcontext()
    return run_lock.holding(config.output_dir, "output_dir")


@dataclass
class StageInputs:
    model_path: str  # a directory, or a hub id
    parent: Entry | None  # the registry entry the model came from, if it did
    registry: Registry
    tokenizer: Any


def resolve_inputs(config) -> StageInputs:
    """The starting model (registry reference, directory or hub id), its registry entry and its tokenizer; a
    model that cannot load (code of its own with trust_remote_code off) is refused before anything loads."""
    from rlhf.adaptation.checkpoint import base_model_config

    registry = Registry(config.registry_dir or None)
    model_path, parent = resolve_model(config.model_name_or_path, registry)
    base_model_config(model_path, trust_remote_code=config.trust_remote_code)
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
    return StageInputs(model_path, parent, registry, tokenizer)


def load_trainable(inputs: StageInputs, config, task: str):
    """The input model with the config's adaptation applied, so that only the chosen parameters train."""
    from transformers import set_seed

    from rlhf.adaptation.apply import apply_adaptation, parameter_summary
    from rlhf.adaptation.checkpoint import load_adapted

    # What ZeRO-3 gathers and frees module by module leaves the resident set (see rlhf.host_memory).
    if host_memory.zero3_in([config.deepspeed]):
        host_memory.return_freed_blocks_to_os()
    # A new head (the reward model's score) and adapter weights start from the config's seed, not from whatever
    # the process drew before: a rerun, in this process or another, starts from the same weights.
    set_seed(config.seed)
    model = load_adapted(
        inputs.model_path,
        task=task,
        trust_remote_code=config.trust_remote_code,
        attn_implementation=config.attn_implementation,
    )
    if task == "reward" and model.config.pad_token_id is None:
        # The score is read at the last non-padding token, which needs to know the padding token.
        model.config.pad_token_id = inputs.tokenizer.pad_token_id
    model = apply_adaptation(model, config, task=task)
    if distributed.is_main_process():
        print(f"adaptation {config.adaptation_method}: {parameter_summary(model)}", flush=True)
    return model


def report_overlong(output_dir: str, fitted: Sequence[tuple[str, str, Any]]) -> dict[str, Any]:
    """Say what the `overlong` policy did to each data set, once (rank 0), and keep its records in overlong.jsonl
    beside the outputs. `fitted` holds (name, file, Fitted) triples; the name ("train", "eval", "prompts") prefixes
    the data set's counts in the metrics. Returns the metrics: the counts, and the summary lines under "overlong"."""
    from pathlib import Path

    listed_in = Path(output_dir) / OVERLONG_FILE
    metrics: dict[str, Any] = {}
    lines = []
    for name, file, result in fitted:
        metrics.update(result.metrics(f"{name}_overlong"))
        if result.over:
            lines.append(f"{file} ({name}): {result.summary(str(listed_in))}")
    if lines:
        metrics["overlong"] = "; ".join(lines)
    if distributed.is_main_process():
        for line in lines:
            print(line, flush=True)
        listed_in.parent.mkdir(parents=True, exist_ok=True)
        listed_in.unlink(missing_ok=True)  # a resumed or repeated run lists what this run left out, nothing older
        write_overlong(listed_in, [(file, result) for _, file, result in fitted])
    return metrics


def parameter_counts(model) -> dict[str, int]:

    from rlhf.adaptation.apply import count_parameters

    trainable, total = count_parameters(model)
    return {"trainable_params": trainable, "total_params": total}


def gold_metrics_of_start(model, inputs: StageInputs, prompts: list, config) -> dict[str, Any]:
    """The gold score of the starting policy (rank 0).

    Under ZeRO-3 `model` is a partition, so a whole copy is graded.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    from rlhf.adaptation.checkpoint import load_adapted
    from rlhf.evaluation import gold_metrics

    if not config.gold_scorer or not prompts or not distributed.is_main_process():
        return {}
    if not is_deepspeed_zero3_enabled():
        return gold_metrics(model, inputs.tokenizer, prompts, config, suffix="before")

    # Loading and generating both inside: under ZeRO-3, generate() would otherwise wait for the other ranks.
    with _compat.zero3_init_disabled():
        whole = load_adapted(
            inputs.model_path,
            task="causal_lm",
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
        )
        return gold_metrics(whole, inputs.tokenizer, prompts, config, suffix="before")
