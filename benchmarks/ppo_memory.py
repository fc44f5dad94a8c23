"""Peak memory per process of the PPO stage's four models on 2 processes: ZeRO-0, ZeRO-2, ZeRO-3, and ZeRO-3 with
the frozen models' parameters offloaded to CPU.

Each layout is a real PPO run, `rlhf.stages.ppo` under `deepspeed --num_gpus 2` with its engines built by the
stage's own builder, for a few steps (generation, scoring, update, final save). Each process records its peak
resident set size (and torch.cuda.max_memory_allocated where there is a GPU, phase by phase), and its RSS once
every library is imported (those transformers imports only when it first loads a tokenizer too), so that the
models' share can be read apart from the libraries'.
On a CPU-only machine "offload to CPU" moves nothing: the parameters are in CPU memory already.

    python -m benchmarks.ppo_memory [--smallest]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from benchmarks import tiny_models
from benchmarks.common import RESULTS_DIR, deepspeed_command, read_json, run_child, write_json
from rlhf.config import settings_to_argv

# actor, critic, reference, reward
LAYOUTS = {
    "zero0": ("zero0", "zero0", "zero0", "zero0"),
    "zero2": ("zero2", "zero2", "zero0", "zero0"),
    "zero3": ("zero3", "zero3", "zero3_inference", "zero3_inference"),
    "zero3_offload_frozen": ("zero3", "zero3", "zero3_inference_offload", "zero3_inference_offload"),
    "zero3_offload": ("zero3_offload", "zero3_offload", "zero3_inference_offload", "zero3_inference_offload"),
}


@dataclass
class Settings:
    layouts: list[str] = field(default_factory=lambda: list(LAYOUTS))
    steps: int = 2
    rollout_batch_size: int = 8
    max_new_tokens: int = 16
    hidden_size: int = 512
    num_layers: int = 4
    num_processes: int = 2
    # bf16 weights and gradients with float32 master weights (DeepSpeed's bf16 mode); None leaves the stage's
    # key unset, so the stage decides as for a user (on where the GPU supports bf16).
    bf16: bool | None = False

    @classmethod
    def smallest(cls) -> Settings:
        return cls(
            layouts=["zero0", "zero3"], steps=1, rollout_batch_size=2, max_new_tokens=4, hidden_size=32, num_layers=1
        )


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop_when_over(limit_mb: float, out_dir: Path, poll_s: float = 0.05) -> None:
    """A capacity scan's guard: once this process's RSS exceeds `limit_mb` the run is over the budget whatever
    follows, so record the RSS seen and end the process (the launcher then ends the other ranks). Saves the scan
    the rest of a run that cannot fit, and keeps several over-budget processes from exhausting the machine."""
    import threading

    from benchmarks.memory_phases import status_mb
    from rlhf import _compat

    def watch() -> None:
        while True:
            rss = status_mb("VmRSS")
            if rss > limit_mb:
                rank = int(os.environ.get("RANK", "0"))
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / f"rank-{rank}.json").write_text(
                    json.dumps({"rank": rank, "stopped_over_mb": rss, "limit_mb": limit_mb})
                )
                _compat.unlink_deepspeed_cpu_all_reduce_buffer()  # a stopped rank never reaches the stage's shutdown
                os._exit(3)
            time.sleep(poll_s)

    threading.Thread(target=watch, daemon=True, name="memory-budget-guard").start()


def worker(out_dir: Path, stage_argv: list[str], stop_over_mb: float | None = None) -> None:
    if stop_over_mb is not None:
        stop_when_over(stop_over_mb, out_dir)
    import deepspeed
    import torch
    import transformers  # noqa: F401

    from benchmarks.memory_phases import Phases
    from rlhf import distributed
    from rlhf.config import parse_config
    from rlhf.ppo import engines, experience, update
    from rlhf.ppo import inputs as ppo_inputs
    from rlhf.rm import model as rm_model
    from rlhf.stages.ppo import PPORecipe, PPOStageConfig, run

    config = parse_config(PPOStageConfig, stage_argv)
    import_what_loading_imports(config.model_name_or_path)
    baseline = current_rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # Each phase's own peak RSS, so that a peak can be placed: the stage looks these functions up on their
    # modules when it runs (engines imports load_adapted), so wrapping the module attributes is enough.
    # RLHF_MEMORY_TRIM=1 also records the RSS after malloc_trim at each phase's end (what the allocator kept but
    # the program had freed).
    phases = Phases(trim=os.environ.get("RLHF_MEMORY_TRIM") == "1", cuda=torch.cuda.is_available())
    for owner, name, label in (
        (engines, "init_distributed", "distributed_init"),
        (ppo_inputs, "read_inputs", "inputs"),
        (engines, "build_engines", "engines_built"),
        (engines, "load_adapted", "load"),
        (rm_model, "load_reward_model", "load_reward"),
        (deepspeed, "initialize", "deepspeed_initialize"),
        (experience, "generate", "generation"),
        (experience, "score", "scoring"),
        (update, "ppo_update", "update"),
        (deepspeed.DeepSpeedEngine, "backward", "backward"),
        (deepspeed.DeepSpeedEngine, "step", "optimizer_step"),
        (deepspeed.DeepSpeedEngine, "forward", "forward"),
        (PPORecipe, "finish", "final_save"),
    ):
        phases.wrap(owner, name, label)
    try:
        run(config)
    finally:
        distributed.shutdown()  # as the stage's command line does: it also removes DeepSpeed's /dev/shm buffer
    first = {}
    for record in phases.records:
        first.setdefault(record["phase"], record)
    record = {
        "rank": distributed.global_rank(),
        "bf16": config.bf16,
        "rss_after_imports_mb": baseline,
        "peak_rss_mb": phases.peak_mb(),
        "peak_rss_in_mb": {label: max(r["peak_mb"] for r in phases.records if r["phase"] == label) for label in first},
        "first_call": first,
        "phases": phases.records,
        # Before the first model loads: the libraries, the process group, the prompts and the tokenizer.
        "rss_before_models_mb": first["engines_built"]["rss_begin_mb"],
    }
    if torch.cuda.is_available():
        record["cuda_max_allocated_mb"] = phases.cuda_peak_mb()
        record["cuda_peak_in_mb"] = {
            label: max(r["cuda_peak_mb"] for r in phases.records if r["phase"] == label) for label in first
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank-{record['rank']}.json").write_text(json.dumps(record))


def import_what_loading_imports(model_dir: str) -> None:
    """Import the libraries that transformers imports only when it first loads a tokenizer and a model (the
    tokenizer's alone add ~90 MB: accelerate, PIL, sympy, tokenizers), so that the RSS measured next is the
    libraries wholly imported and "above imports" is the models' share, not partly a library's. Loads the
    tokenizer and drops it, and imports the model's class without building it."""
    import gc

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from rlhf.models import load_tokenizer

    load_tokenizer(model_dir)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_dir))]
    gc.collect()


def stage_argv(models: dict, settings: Settings, layout: str, output_dir: Path, registry: Path) -> list[str]:
    actor, critic, reference, reward = (f"deepspeed_configs/{name}.json" for name in LAYOUTS[layout])
    arguments = {
        "model_name_or_path": models["policy"],
        "critic_model": models["reward"],
        "reward_model": models["reward"],
        "prompts_file": models["prompts"],
        "output_dir": output_dir,
        "registry_dir": registry,
        "max_new_tokens": settings.max_new_tokens,
        "max_steps": settings.steps,
        "rollout_batch_size": settings.rollout_batch_size,
        "minibatch_size": settings.rollout_batch_size // 2,
        "ppo_epochs": 1,
        "save_steps": 0,
        "disable_tqdm": "true",
        "report_to": "none",
        # per_step: a ZeRO-3 actor never whole on a rank, not even while it generates (gather_once would hold it).
        "register_as": f"bench-memory-{layout}",
        "zero3_generation": "per_step",
        "actor_deepspeed": actor,
        "critic_deepspeed": critic,
        "reference_deepspeed": reference,
        "reward_deepspeed": reward,
    }
    if settings.bf16 is not None:
        arguments["bf16"] = settings.bf16
    return settings_to_argv(arguments)


def run_one(
    models: dict, settings: Settings, layout: str, workdir: Path, log=print, stop_over_mb: float | None = None
) -> dict:
    """One layout on `settings.num_processes` processes: the row of the higher rank's numbers. With
    `stop_over_mb`, a process that exceeds it ends the run: the row then has `stopped_over_mb` (the RSS seen)."""
    configs = dict(zip(("actor", "critic", "reference", "reward"), LAYOUTS[layout]))
    name = f"{layout}-{settings.num_processes}p-{settings.hidden_size}x{settings.num_layers}"
    log(
        f"ppo_memory: {layout} on {settings.num_processes} processes, hidden {settings.hidden_size}, "
        f"{settings.num_layers} layers"
    )
    out_dir = workdir / f"memory-{name}"
    shutil.rmtree(out_dir, ignore_errors=True)  # an earlier run's rank files must not stand in for this run's
    argv = stage_argv(models, settings, layout, workdir / f"ppo-{name}", workdir / "registry")
    row = {
        "layout": layout,
        "processes": settings.num_processes,
        "configs": configs,
        "bf16": settings.bf16,
        "parameters": models["parameters"]["policy"],
    }
    guard = ["--stop-over-mb", str(stop_over_mb)] if stop_over_mb is not None else []
    try:
        run_child(
            deepspeed_command(
                "benchmarks.ppo_memory",
                ["--worker", "--out-dir", str(out_dir), *guard, "--", *argv],
                settings.num_processes,
            ),
            workdir / f"memory-{name}.log",
        )
    except RuntimeError as error:  # one layout failing (e.g. offload unsupported here) leaves the others
        stopped = [
            record["stopped_over_mb"]
            for record in map(read_json, out_dir.glob("rank-*.json"))
            if "stopped_over_mb" in record
        ]
        if stopped:
            log(f"ppo_memory: {layout} stopped: a process passed {stop_over_mb:.0f} MB ({max(stopped):.0f})")
            return {**row, "stopped_over_mb": max(stopped), "peak_rss_mb": max(stopped)}
        log(f"ppo_memory: {layout} failed: {error}")
        return {**row, "error": str(error)[-2000:]}
    ranks = sorted((read_json(path) for path in out_dir.glob("rank-*.json")), key=lambda r: r["rank"])
    row.update(
        ranks=ranks,
        bf16=ranks[0]["bf16"],
        peak_rss_mb=max(r["peak_rss_mb"] for r in ranks),
        models_share_mb=max(r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in ranks),
        above_models_start_mb=max(r["peak_rss_mb"] - r["rss_before_models_mb"] for r in ranks),
        peak_rss_in_mb={
            label: max(r["peak_rss_in_mb"].get(label, 0.0) for r in ranks) for label in ranks[0]["peak_rss_in_mb"]
        },
    )
    if "cuda_max_allocated_mb" in ranks[0]:
        row["cuda_max_allocated_mb"] = max(r["cuda_max_allocated_mb"] for r in ranks)
        row["cuda_peak_in_mb"] = {
            label: max(r["cuda_peak_in_mb"].get(label, 0.0) for r in ranks) for label in ranks[0]["cuda_peak_in_mb"]
        }
    return row


def run_layouts(settings: Settings, workdir: Path, log=print, processes: list[int] | None = None) -> dict:
    """Every layout at every process count; each row's ratio is against ZeRO-0 at the same process count."""
    models = tiny_models.build(
        workdir / f"models-memory-{settings.hidden_size}x{settings.num_layers}",
        tiny_models.TinySize(settings.hidden_size, settings.num_layers, 8),
    )
    rows = []
    for count in processes or [settings.num_processes]:
        at_count = replace(settings, num_processes=count)
        rows += [run_one(models, at_count, layout, workdir, log) for layout in settings.layouts]
    for row in rows:
        base = next(
            (r for r in rows if r["processes"] == row["processes"] and r["layout"] == "zero0" and "error" not in r),
            None,
        )
        if "error" not in row and base is not None:
            row["models_share_vs_zero0"] = row["models_share_mb"] / base["models_share_mb"]
            row["above_models_start_vs_zero0"] = row["above_models_start_mb"] / base["above_models_start_mb"]
    parameters = models["parameters"]
    return {
        "settings": asdict(settings),
        "model": models["model"],
        "parameters": parameters,
        "fp32_mb_per_model": {name: 4 * count / 2**20 for name, count in parameters.items()},
        "rows": rows,
    }


def run_capacity(settings: Settings, workdir: Path, budget_mb: float, layers: list[int], log=print) -> dict:
    """For each layout, the largest policy (hidden `settings.hidden_size`, layers scanned upwards) whose PPO run
    of `settings.steps` steps keeps every process's peak RSS within `budget_mb`. A layout stops at its first
    size over the budget; the sizes tried are kept."""
    result = {"budget_mb": budget_mb, "settings": asdict(settings), "layouts": {}}
    for layout in settings.layouts:
        tried = []
        for count in layers:
            sized = replace(settings, num_layers=count)
            models = tiny_models.build(
                workdir / f"models-memory-{sized.hidden_size}x{count}",
                tiny_models.TinySize(sized.hidden_size, count, 8),
            )
            row = run_one(models, sized, layout, workdir, log, stop_over_mb=budget_mb)
            row["num_layers"] = count
            tried.append(
                {
                    key: row[key]
                    for key in (
                        "num_layers",
                        "parameters",
                        "peak_rss_mb",
                        "error",
                        "stopped_over_mb",
                        "peak_rss_in_mb",
                        "ranks",
                    )
                    if key in row
                }
            )
            if "error" in row or row["peak_rss_mb"] > budget_mb:
                break
        fitting = [t for t in tried if "error" not in t and t["peak_rss_mb"] <= budget_mb]
        result["layouts"][layout] = {"tried": tried, "largest": fitting[-1] if fitting else None}
    return result


def markdown(result: dict) -> str:
    gpu = any("cuda_max_allocated_mb" in row for row in result["rows"])
    lines = [
        "| layout (actor, critic / reference, reward) | processes | peak RSS per process (MB) | above imports (MB) "
        "| vs zero0 (same processes) | above the start of model loading (MB) | vs zero0 |"
        + (" CUDA max allocated (MB) |" if gpu else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for row in result["rows"]:
        c = row["configs"]
        precision = ", bf16" if row.get("bf16") else ""
        label = (
            f"| {row['layout']} ({c['actor']}, {c['critic']} / {c['reference']}, {c['reward']}){precision} "
            f"| {row['processes']} |"
        )
        if "error" in row:
            reason = row["error"].strip().splitlines()[-1][:160].replace("|", "/")
            lines.append(f"{label} failed: `{reason}` | | | | |" + (" |" if gpu else ""))
            continue
        ratio, from_start = row.get("models_share_vs_zero0"), row.get("above_models_start_vs_zero0")
        line = (
            f"{label} {row['peak_rss_mb']:.0f} | {row['models_share_mb']:.0f} | "
            + (f"{ratio:.3f}x |" if ratio is not None else "- |")
            + f" {row['above_models_start_mb']:.0f} | "
            + (f"{from_start:.3f}x |" if from_start is not None else "- |")
        )
        if gpu:
            line += f" {row['cuda_max_allocated_mb']:.0f} |"
        lines.append(line)
    lines += phase_table(result["rows"], "peak_rss_in_mb", "Peak RSS")
    if gpu:
        lines += phase_table(result["rows"], "cuda_peak_in_mb", "Peak CUDA memory allocated")
    return "\n".join(lines)


def phase_table(rows: list[dict], key: str, what: str) -> list[str]:
    lines = [
        "",
        f"{what} (MB, the higher rank) within each phase (each phase's own high-water mark):",
        "",
        "| layout | processes | " + " | ".join(PHASE_LABELS.values()) + " |",
        "|---|---:|" + "---:|" * len(PHASE_LABELS),
    ]
    for row in rows:
        phases = row.get(key)
        if phases:
            lines.append(
                f"| {row['layout']} | {row['processes']} | "
                + " | ".join(f"{phases[k]:.0f}" if k in phases else "-" for k in PHASE_LABELS)
                + " |"
            )
    return lines


def capacity_markdown(result: dict) -> str:
    lines = [
        f"Largest policy whose {result['settings']['steps']}-step PPO run stays within "
        f"{result['budget_mb']:.0f} MB per process ({result['settings']['num_processes']} processes, hidden "
        f"{result['settings']['hidden_size']}, layers scanned):",
        "",
        "| layout | largest policy (layers, parameters) | its peak RSS (MB) | sizes tried (layers: peak MB) |",
        "|---|---:|---:|---|",
    ]
    for layout, found in result["layouts"].items():
        largest = found["largest"]
        tried = ", ".join(
            f"{t['num_layers']}: "
            + (
                "failed"
                if "error" in t
                else f"over, stopped at {t['stopped_over_mb']:.0f}"
                if "stopped_over_mb" in t
                else f"{t['peak_rss_mb']:.0f}"
            )
            for t in found["tried"]
        )
        lines.append(
            f"| {layout} | "
            + (
                f"{largest['num_layers']}, {largest['parameters'] / 1e6:.0f}M | {largest['peak_rss_mb']:.0f} |"
                if largest
                else "none | - |"
            )
            + f" {tried} |"
        )
    return "\n".join(lines)


PHASE_LABELS = {
    "engines_built": "engines built",
    "generation": "generation",
    "scoring": "scoring",
    "backward": "backward",
    "optimizer_step": "optimizer step",
    "update": "PPO update",
    "final_save": "final save",
}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        split = argv.index("--")
        head, stage = argv[:split], argv[split + 1 :]
        out_dir = Path(head[head.index("--out-dir") + 1])
        stop_over_mb = float(head[head.index("--stop-over-mb") + 1]) if "--stop-over-mb" in head else None
        worker(out_dir, stage, stop_over_mb)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true")
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--hidden-size", type=int, default=Settings.hidden_size)
    parser.add_argument("--num-layers", type=int, default=Settings.num_layers)
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--rollout-batch-size", type=int, default=Settings.rollout_batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=Settings.max_new_tokens)
    parser.add_argument("--bf16", action="store_const", const=True, default=False)
    parser.add_argument(
        "--bf16-auto",
        dest="bf16",
        action="store_const",
        const=None,
        help="leave the stage's bf16 unset: on where the GPU supports it, as for a user",
    )
    parser.add_argument("--capacity-budget-mb", type=float, help="scan policy sizes under this per-process budget")
    parser.add_argument("--capacity-layers", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16])
    parser.add_argument("--workdir", type=Path, help="kept (models reused) instead of a temporary directory")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ppo_memory.json")
    args = parser.parse_args(argv)
    settings = (
        Settings.smallest()
        if args.smallest
        else Settings(
            layouts=args.layouts,
            steps=args.steps,
            rollout_batch_size=args.rollout_batch_size,
            max_new_tokens=args.max_new_tokens,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            num_processes=args.processes[0],
            bf16=args.bf16,
        )
    )
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-memory-")))
        if args.capacity_budget_mb:
            result = run_capacity(settings, workdir, args.capacity_budget_mb, args.capacity_layers)
            print(capacity_markdown(result))
        else:
            result = run_layouts(settings, workdir, processes=args.processes)
            print(markdown(result))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
