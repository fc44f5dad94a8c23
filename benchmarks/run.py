"""Every benchmark in one command; writes benchmarks/RESULTS.md and benchmarks/results/all.json.

    python -m benchmarks.run                         # the full suite (plus creating the TRL venv once)
    python -m benchmarks.run --smallest --no-peer    # smallest settings, no TRL venv: checks the suite runs
    python -m benchmarks.run --demo-run runs/demo    # also read a pipeline run for the end-to-end section
    python -m benchmarks.run --only ppo_vs_trl rm_kway
    python -m benchmarks.run --only rm_shared_prompt   # shared-prompt RM training (keeps the other sections)

Ratios compare ours with a peer or baseline measured in alternation within this run: the machine is shared
and its speed drifts, so ratios mean more than the seconds behind them (kept in the JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import REPO, machine_info, write_json, write_results

NAMES = (
    "matmul",
    "ppo_vs_trl",
    "zero3_generation",
    "ppo_memory",
    "rm_kway",
    "rm_shared_prompt",
    "sft_throughput",
    "demo",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# The benchmarks, each returning a JSON-ready dict
# ---------------------------------------------------------------------------------------------------------


def bench_matmul(args, workdir: Path, results: dict) -> dict:
    import torch

    from benchmarks.matmul import matmul_flops

    sizes = (128, 256) if args.smallest else (256, 512, 1024)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return matmul_flops(sizes=sizes, repeats=3 if args.smallest else 7, device=device)


def bench_ppo_vs_trl(args, workdir: Path, results: dict) -> dict:
    from benchmarks import ppo_vs_trl

    settings = ppo_vs_trl.Settings.smallest() if args.smallest else ppo_vs_trl.Settings()
    peak = results.get("matmul", {}).get("peak_flops")
    return ppo_vs_trl.run(settings, workdir, peer=not args.no_peer, peak_flops=peak, log=log, profile=True)


def bench_zero3_generation(args, workdir: Path, results: dict) -> dict:
    from benchmarks import zero3_generation

    settings = zero3_generation.Settings.smallest() if args.smallest else zero3_generation.Settings()
    return zero3_generation.run(settings, workdir, log=log)


def bench_ppo_memory(args, workdir: Path, results: dict) -> dict:
    from benchmarks import ppo_memory

    settings = ppo_memory.Settings.smallest() if args.smallest else ppo_memory.Settings()
    return ppo_memory.run_layouts(settings, workdir, log=log)


def bench_rm_kway(args, workdir: Path, results: dict) -> dict:
    import torch

    from benchmarks import kway_vs_pairs

    torch.set_num_threads(1)
    if args.smallest:
        settings = {"ks": [2, 4], "num_rankings": 2, "seq_len": 16, "warmup": 1, "repeats": 1, "seed": 0}
    else:
        settings = {"ks": [2, 4, 6, 9], "num_rankings": 8, "seq_len": 32, "warmup": 2, "repeats": 5, "seed": 0}
    rows = kway_vs_pairs.run(**settings)
    return {
        "settings": settings,
        "rows": rows,
        "model": "LlamaForSequenceClassification hidden 32, 2 layers, vocab 64",
        "step": "forward + loss + backward + AdamW step",
    }


def bench_rm_shared_prompt(args, workdir: Path, results: dict) -> dict:
    from benchmarks import shared_prompt

    return shared_prompt.run(shared_prompt.Settings.smallest() if args.smallest else shared_prompt.Settings(), log=log)


def bench_sft_throughput(args, workdir: Path, results: dict) -> dict:
    """SFT tokens/s from benchmarks/sft_throughput.py, written on its own branch; skipped while it is absent."""
    script = REPO / "benchmarks" / "sft_throughput.py"
    if not script.is_file():
        return {"measured": False, "note": "not measured: benchmarks/sft_throughput.py is not in this checkout yet"}
    from benchmarks.common import read_json, run_child

    out = workdir / "sft_throughput.json"
    command = [sys.executable, "-m", "benchmarks.sft_throughput", "--out", str(out)]
    if args.smallest:
        command.append("--smoke")
    run_child(command, workdir / "sft_throughput.log")
    return {"measured": True, **read_json(out)}


def bench_demo(args, workdir: Path, results: dict) -> dict:
    from benchmarks import demo_run

    return demo_run.read(Path(args.demo_run) if args.demo_run else None)


BENCHMARKS = {
    "matmul": bench_matmul,
    "ppo_vs_trl": bench_ppo_vs_trl,
    "zero3_generation": bench_zero3_generation,
    "ppo_memory": bench_ppo_memory,
    "rm_kway": bench_rm_kway,
    "rm_shared_prompt": bench_rm_shared_prompt,
    "sft_throughput": bench_sft_throughput,
    "demo": bench_demo,
}
assert tuple(BENCHMARKS) == NAMES


# ---------------------------------------------------------------------------------------------------------
# Derived: each stage's tokens per second, training FLOP/s against the matmul ceiling
# ---------------------------------------------------------------------------------------------------------


def stage_throughput(results: dict) -> list[dict]:
    rows = []
    sft = results.get("sft_throughput", {})
    sft_rate = sft.get("medians", {}).get("ours", {}).get("tokens_per_s")
    rows.append(
        {
            "stage": "SFT (training)",
            "tokens_per_s": sft_rate,
            "note": "benchmarks/sft_throughput.py"
            if sft_rate is not None
            else sft.get("note") or sft.get("error") or "not measured",
        }
    )
    rm = results.get("rm_kway", {})
    if rm.get("rows"):
        settings = rm["settings"]
        row = next((r for r in rm["rows"] if r["k"] == 4), rm["rows"][-1])
        rate = row["kway_rankings_per_s"] * row["k"] * settings["seq_len"]
        rows.append(
            {
                "stage": f"RM (training, K-way loss, K={row['k']})",
                "tokens_per_s": rate,
                "note": f"{row['kway_rankings_per_s']:.1f} rankings/s x {row['k']} responses x "
                f"{settings['seq_len']} positions (padding included)",
            }
        )
    ppo = results.get("ppo_vs_trl", {})
    ours = ppo.get("ours")
    if ours:
        settings = ppo["settings"]
        rows.append(
            {
                "stage": "PPO (generation)",
                "tokens_per_s": ours["tokens_per_second"],
                "note": f"response tokens / generation time; TRL: {ppo['trl']['tokens_per_second']:.0f}"
                if ppo.get("trl")
                else "response tokens / generation time",
            }
        )
        trained_tokens = ours["training_flops_per_step"] / (6 * sum(ppo["parameters"].values()))
        share = ours.get("training_share_of_matmul_peak")
        rows.append(
            {
                "stage": "PPO (training)",
                "tokens_per_s": trained_tokens / ours["time_training"],
                "flops_per_s": ours["training_flops_per_second"],
                "share_of_matmul_peak": share,
                "note": f"rollout x (prompt + response) x {settings['ppo_epochs']} epochs / training time; "
                "FLOPs = 6 x (actor + critic params) x tokens",
            }
        )
    return rows


def _first_number(mapping: dict, keys) -> float | None:
    for key in keys:
        if isinstance(mapping.get(key), (int, float)):
            return float(mapping[key])
    for value in mapping.values():
        if isinstance(value, dict):
            found = _first_number(value, keys)
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------------------------


def render(machine: dict, results: dict, derived: list[dict], args, seconds: float) -> dict[str, str]:
    """The measured part of RESULTS.md, one markdown block per section (see `common.fill_blocks`)."""
    from benchmarks import demo_run, ppo_memory, ppo_vs_trl, shared_prompt, zero3_generation
    from benchmarks.kway_vs_pairs import markdown_table

    v = machine["versions"]
    blocks = {
        "header": "\n".join(
            [
                f"Generated by `python -m benchmarks.run{' --smallest' if args.smallest else ''}"
                f"{' --no-peer' if args.no_peer else ''}` on {machine['date']} in {seconds / 60:.1f} min.",
                "",
                f"- Machine: {machine['cpu']}, {machine['cpu_cores']} cores, GPU: {machine['gpu'] or 'none'}; "
                "shared with other jobs, so compare ratios, not seconds. "
                f"OMP_NUM_THREADS={machine['omp_num_threads']}.",
                f"- Python {machine['python']}; "
                + ", ".join(f"{k} {v[k]}" for k in v if v[k])
                + "."
                + (
                    f" Peer: TRL {results['ppo_vs_trl']['trl_versions']['trl']} with transformers "
                    f"{results['ppo_vs_trl']['trl_versions']['transformers']} in its own venv "
                    "(benchmarks/.venv-trl100)."
                    if results.get("ppo_vs_trl", {}).get("trl_versions")
                    else ""
                ),
                "- Models: tiny Llamas built from config (never downloaded), float32; details and raw timings in "
                "`results/all.json`.",
            ]
        )
    }

    def section(name: str, body) -> None:
        result = results.get(name)
        if result is None:
            blocks[name] = "not run (left out with --only)"
        elif "error" in result:
            blocks[name] = f"**failed**: `{result['error']}`"
        else:
            blocks[name] = body(result)

    def ppo_body(result):
        s = result["settings"]
        text = [
            f"{result['model']}; rollout {s['rollout_batch_size']} prompts, minibatch {s['minibatch_size']}, "
            f"{s['ppo_epochs']} PPO epochs, {s['max_new_tokens']} new tokens; medians over "
            f"{result['ours']['timed_steps']} steps after warm-up, {s['rounds']} alternating runs each.",
            "",
            ppo_vs_trl.markdown(result),
        ]
        return "\n".join(text + (["", result["note"]] if result.get("note") else []))

    section("ppo_vs_trl", ppo_body)
    section(
        "zero3_generation",
        lambda r: (
            f"{r['model']}; {r['settings']['prompts_per_rank']} prompts per rank, "
            f"{r['settings']['max_new_tokens']} tokens each; median of {r['settings']['repeats']}.\n\n"
            + zero3_generation.markdown(r)
        ),
    )
    section(
        "rm_kway",
        lambda r: (
            f"{r['model']}; {r['settings']['num_rankings']} rankings per step, sequences of "
            f"{r['settings']['seq_len']}; median of {r['settings']['repeats']} steps.\n\n" + markdown_table(r["rows"])
        ),
    )
    section("rm_shared_prompt", shared_prompt.markdown)
    section(
        "ppo_memory",
        lambda r: (
            f"{r['model']} ({r['parameters']['policy'] / 1e6:.1f}M parameters per policy, "
            f"{r['fp32_mb_per_model']['policy']:.0f} MB in fp32); {r['settings']['steps']} PPO steps.\n\n"
            + ppo_memory.markdown(r)
        ),
    )
    blocks["stage_throughput"] = stage_throughput_markdown(results, derived)
    section("demo", demo_run.markdown)
    return blocks


def stage_throughput_markdown(results: dict, derived: list[dict]) -> str:
    out = []
    matmul = results.get("matmul", {})
    if "peak_flops" in matmul:
        out += [
            f"Dense matmul ceiling measured in this run: {matmul['peak_flops'] / 1e9:.1f} GFLOP/s "
            f"({matmul['dtype']}, {matmul['device']}, {matmul['threads']} thread(s)).",
            "",
        ]
    out += ["| stage | tokens/s | FLOP/s | share of matmul ceiling | how |", "|---|---:|---:|---:|---|"]
    for row in derived:
        rate = f"{row['tokens_per_s']:.0f}" if row.get("tokens_per_s") is not None else "not measured"
        flops = f"{row['flops_per_s'] / 1e9:.2f} G" if row.get("flops_per_s") else ""
        share = f"{100 * row['share_of_matmul_peak']:.1f}%" if row.get("share_of_matmul_peak") else ""
        out.append(f"| {row['stage']} | {rate} | {flops} | {share} | {row['note']} |")
    sft = results.get("sft_throughput", {})
    if sft.get("measured") and "medians" in sft:
        settings, rate, ratio = (
            sft["settings"],
            {k: v["tokens_per_s"] for k, v in sft["medians"].items()},
            sft["ratios"],
        )
        out += [
            "",
            f"SFT tokens/s ({settings['model']}, batch {settings['batch_size']}, max length {settings['max_length']}, "
            f"{settings['steps']} steps, median of {settings['repeats']} alternating runs; non-padding tokens over the "
            f"training loop's time):",
            "",
            "| setup | tokens/s | vs TRL SFTTrainer defaults |",
            "|---|---:|---:|",
            *[
                f"| {label} | {rate[name]:.0f} | {rate[name] / rate['trl_sft']:.2f}x |"
                for name, label in (
                    ("hf_trainer", "transformers Trainer, no completion mask"),
                    ("trl_sft", "TRL SFTTrainer, defaults"),
                    ("trl_sft_packing", "TRL SFTTrainer, packing"),
                    ("ours", "our stage"),
                    ("ours_packing", "our stage, packing"),
                )
                if name in rate
            ],
            "",
            f"Our packing against TRL's: {ratio['ours_packing_vs_trl_sft_packing']:.2f}x.",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smallest", action="store_true", help="smallest settings: tiny models, 1-2 steps")
    parser.add_argument("--no-peer", action="store_true", help="skip the TRL peer and creating its venv")
    parser.add_argument("--demo-run", default="", help="a pipeline run directory for the end-to-end section")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these (matmul always runs)")
    parser.add_argument(
        "--results-dir", type=Path, default=REPO / "benchmarks", help="where RESULTS.md and results/all.json go"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep models, logs and runs here")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite RESULTS.md from the existing results/all.json without measuring",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        from benchmarks.common import read_json

        saved = read_json(args.results_dir / "results" / "all.json")
        args.smallest, args.no_peer = saved["smallest"], not saved["peer"]
        write_results(
            args.results_dir,
            render(saved["machine"], saved["results"], saved["stage_throughput"], args, saved["wall_s"]),
        )
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from benchmarks.common import default_accelerator

    os.environ.setdefault("DS_ACCELERATOR", default_accelerator())

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    selected = [n for n in NAMES if n == "matmul" or not args.only or n in args.only]
    started = time.perf_counter()
    machine = machine_info()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in selected:
            log(f"{name} ...")
            began = time.perf_counter()
            try:
                results[name] = BENCHMARKS[name](args, workdir, results)
            except Exception as error:  # one failed benchmark is reported, the others still run
                traceback.print_exc()
                results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
            results[name]["wall_s"] = round(time.perf_counter() - began, 1)
            log(f"{name} done in {results[name]['wall_s']} s")
    saved_file = args.results_dir / "results" / "all.json"
    if args.only and saved_file.is_file():
        # A partial re-run keeps the other sections' numbers; each section's ratios come from one run of its own.
        from benchmarks.common import read_json

        results = {**read_json(saved_file)["results"], **results}
    derived = stage_throughput(results)
    seconds = time.perf_counter() - started
    all_json = {
        "machine": machine,
        "smallest": args.smallest,
        "peer": not args.no_peer,
        "wall_s": round(seconds, 1),
        "results": results,
        "stage_throughput": derived,
    }
    write_json(args.results_dir / "results" / "all.json", all_json)
    write_results(args.results_dir, render(machine, results, derived, args, seconds))
    log(f"wrote {args.results_dir / 'RESULTS.md'} and {args.results_dir / 'results' / 'all.json'}")
    failed = [name for name, result in results.items() if "error" in result]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
