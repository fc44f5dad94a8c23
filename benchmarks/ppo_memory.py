"""Peak memory per process of the PPO stage's four models on 2 processes: ZeRO-0, ZeRO-2, ZeRO-3, and ZeRO-3 with
the frozen models' parameters offloaded to CPU.

Each layout is a real PPO run, `rlhf.stages.ppo` under `deepspeed --num_gpus 2` with its engines built by the
stage's own builder, for a few steps (generation, scoring, update, final save). Each process records its peak
resident set size (and torch.cuda.max_memory_allocated where there is a GPU), and its RSS once torch,
transformers and DeepSpeed are imported, so that the models' share can be read apart from the libraries'.
On a CPU-only machine "offload to CPU" moves nothing: the parameters are in CPU memory already.

    python -m benchmarks.ppo_memory [--smallest]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import tiny_models
from benchmarks.common import RESULTS_DIR, deepspeed_command, peak_rss_mb, read_json, run_child, write_json
from rlhf.config import settings_to_argv

# actor, critic, reference, reward
LAYOUTS = {
    "zero0": ("zero0", "zero0", "zero0", "zero0"),
    "zero2": ("zero2", "zero2", "zero0", "zero0"),
    "zero3": ("zero3", "zero3", "zero3_inference", "zero3_inference"),
    "zero3_offload_frozen": ("zero3", "zero3", "zero3_inference_offload", "zero3_inference_offload"),
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

    @classmethod
    def smallest(cls) -> "Settings":
        return cls(layouts=["zero0", "zero3"], steps=1, rollout_batch_size=2, max_new_tokens=4, hidden_size=32,
                   num_layers=1)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(out_dir: Path, stage_argv: list[str]) -> None:
    import deepspeed  # noqa: F401  (imported before the baseline is read)
    import torch
    import transformers  # noqa: F401

    from rlhf import distributed
    from rlhf.config import parse_config
    from rlhf.ppo import engines, experience, update
    from rlhf.stages.ppo import PPORecipe, PPOStageConfig, run

    baseline = current_rss_mb()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # The peak RSS when each phase of the stage first ends, so that a peak can be placed: the stage looks these
    # functions up on their modules when it runs, so wrapping the module attributes is enough.
    peaks = {}
    for module, name, label in ((engines, "build_engines", "engines_built"), (experience, "generate", "generation"),
                                (experience, "score", "scoring"), (update, "ppo_update", "update"),
                                (PPORecipe, "finish", "final_save")):
        setattr(module, name, _peak_after(getattr(module, name), label, peaks))
    run(parse_config(PPOStageConfig, stage_argv))
    record = {"rank": distributed.global_rank(), "rss_after_imports_mb": baseline, "peak_rss_mb": peak_rss_mb(),
              "peak_rss_after_mb": peaks, "rss_after_engines_mb": peaks.get("engines_built_rss"),
              "peak_rss_after_engines_mb": peaks.get("engines_built")}
    peaks.pop("engines_built_rss", None)
    if torch.cuda.is_available():
        record["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank-{record['rank']}.json").write_text(json.dumps(record))


def _peak_after(function, label: str, peaks: dict):
    def measured(*positional, **keywords):
        result = function(*positional, **keywords)
        if label not in peaks:
            peaks[label] = peak_rss_mb()
            if label == "engines_built":
                peaks["engines_built_rss"] = current_rss_mb()
        return result

    return measured


def stage_argv(models: dict, settings: Settings, layout: str, output_dir: Path, registry: Path) -> list[str]:
    actor, critic, reference, reward = (f"deepspeed_configs/{name}.json" for name in LAYOUTS[layout])
    arguments = {
        "model_name_or_path": models["policy"], "critic_model": models["reward"], "reward_model": models["reward"],
        "prompts_file": models["prompts"], "output_dir": output_dir, "registry_dir": registry,
        "max_new_tokens": settings.max_new_tokens, "max_steps": settings.steps,
        "rollout_batch_size": settings.rollout_batch_size, "minibatch_size": settings.rollout_batch_size // 2,
        "ppo_epochs": 1, "save_steps": 0, "disable_tqdm": "true", "report_to": "none",
        "register_as": f"bench-memory-{layout}", "zero3_generation": "gather_once",
        "actor_deepspeed": actor, "critic_deepspeed": critic, "reference_deepspeed": reference,
        "reward_deepspeed": reward,
    }
    return settings_to_argv(arguments)


def run_layouts(settings: Settings, workdir: Path, log=print) -> dict:
    models = tiny_models.build(workdir / "models-memory", tiny_models.TinySize(settings.hidden_size,
                                                                               settings.num_layers, 8))
    rows = []
    for layout in settings.layouts:
        log(f"ppo_memory: {layout} on {settings.num_processes} processes")
        out_dir = workdir / f"memory-{layout}"
        argv = stage_argv(models, settings, layout, workdir / f"ppo-{layout}", workdir / "registry")
        try:
            run_child(deepspeed_command("benchmarks.ppo_memory", ["--worker", "--out-dir", str(out_dir), "--", *argv],
                                        settings.num_processes), workdir / f"memory-{layout}.log")
        except RuntimeError as error:  # one layout failing (e.g. offload unsupported here) leaves the others
            log(f"ppo_memory: {layout} failed: {error}")
            rows.append({"layout": layout, "configs": dict(zip(("actor", "critic", "reference", "reward"),
                                                                LAYOUTS[layout])), "error": str(error)[-2000:]})
            continue
        ranks = sorted((read_json(path) for path in out_dir.glob("rank-*.json")), key=lambda r: r["rank"])
        row = {"layout": layout, "peak_rss_after_engines_mb": max(r["peak_rss_after_engines_mb"] for r in ranks), "configs": dict(zip(("actor", "critic", "reference", "reward"), LAYOUTS[layout])),
               "ranks": ranks, "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks),
               "models_share_mb": max(r["peak_rss_mb"] - r["rss_after_imports_mb"] for r in ranks)}
        row["peak_rss_after_mb"] = {label: max(r["peak_rss_after_mb"].get(label, 0.0) for r in ranks)
                                    for label in ranks[0].get("peak_rss_after_mb", {})}
        if "cuda_max_allocated_mb" in ranks[0]:
            row["cuda_max_allocated_mb"] = max(r["cuda_max_allocated_mb"] for r in ranks)
        rows.append(row)
    measured = [row for row in rows if "error" not in row]
    base = measured[0]["models_share_mb"] if measured else float("nan")
    for row in measured:
        row["models_share_vs_first"] = row["models_share_mb"] / base if base > 0 else float("nan")
    parameters = models["parameters"]
    return {"settings": asdict(settings), "model": models["model"], "parameters": parameters,
            "fp32_mb_per_model": {name: 4 * count / 2**20 for name, count in parameters.items()}, "rows": rows}


def markdown(result: dict) -> str:
    gpu = any("cuda_max_allocated_mb" in row for row in result["rows"])
    header = "| layout (actor, critic / reference, reward) | peak RSS per process (MB) | above imports (MB) | vs " \
             f"{result['rows'][0]['layout']} | peak RSS once engines are built (MB) |" + \
             (" CUDA max allocated (MB) |" if gpu else "")
    first = next((row["layout"] for row in result["rows"] if "error" not in row), "first")
    header = header.replace(f"vs {result['rows'][0]['layout']}", f"vs {first}")
    lines = [header, "|---|---:|---:|---:|---:|" + ("---:|" if gpu else "")]
    for row in result["rows"]:
        c = row["configs"]
        if "error" in row:
            reason = row["error"].strip().splitlines()[-1][:160].replace("|", "/")
            lines.append(f"| {row['layout']} ({c['actor']}, {c['critic']} / {c['reference']}, {c['reward']}) | "
                         f"failed: `{reason}` | | | |" + (" |" if gpu else ""))
            continue
        line = (f"| {row['layout']} ({c['actor']}, {c['critic']} / {c['reference']}, {c['reward']}) | "
                f"{row['peak_rss_mb']:.0f} | {row['models_share_mb']:.0f} | {row['models_share_vs_first']:.2f}x | "
                f"{row['peak_rss_after_engines_mb']:.0f} |")
        if gpu:
            line += f" {row['cuda_max_allocated_mb']:.0f} |"
        lines.append(line)
    lines += ["", "Peak RSS (MB, the higher rank) when each phase first ended:", "",
              "| layout | " + " | ".join(PHASE_LABELS.values()) + " |", "|---|" + "---:|" * len(PHASE_LABELS)]
    for row in result["rows"]:
        phases = row.get("peak_rss_after_mb")
        if phases:
            lines.append(f"| {row['layout']} | " + " | ".join(f"{phases[k]:.0f}" if k in phases else "-"
                                                             for k in PHASE_LABELS) + " |")
    return "\n".join(lines)


PHASE_LABELS = {"engines_built": "engines built", "generation": "first generation", "scoring": "first scoring",
                "update": "first PPO update", "final_save": "final save"}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        split = argv.index("--")
        head, stage = argv[:split], argv[split + 1:]
        out_dir = Path(head[head.index("--out-dir") + 1])
        worker(out_dir, stage)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ppo_memory.json")
    args = parser.parse_args(argv)
    settings = Settings.smallest() if args.smallest else Settings()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        result = run_layouts(settings, Path(workdir))
    print(markdown(result))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
