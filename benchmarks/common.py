"""What every benchmark shares: the machine and versions it ran on, interleaved timing, child processes.

The machine is shared with other sessions and its speed drifts, so each benchmark times ours and its
peer or baseline in alternation within one run and reports their ratio; absolute seconds are kept in
the JSON for reference only.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from rlhf.distributed import free_port
from rlhf.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
LIBRARIES = ("torch", "transformers", "trl", "deepspeed", "accelerate", "peft", "datasets")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ds_accelerator": os.environ.get("DS_ACCELERATOR"),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, theirs: float) -> float:
    return round(ours / theirs, 3) if theirs else float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_env(**extra: str) -> dict:
    """The environment of a benchmark's child: the repository importable, one thread, DeepSpeed on CPU unless a
    GPU is there, and no leftover launcher variables that would make it join someone else's process group."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("DS_ACCELERATOR", default_accelerator())
    env["TOKENIZERS_PARALLELISM"] = "false"
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def default_accelerator() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_child(command: Sequence[str], log: Path, env: dict | None = None, timeout: float = 1800) -> None:
    """Run a child process, its output into `log`; a failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        completed = subprocess.run(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=env or child_env(), cwd=REPO, timeout=timeout
        )
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {completed.returncode}; log {log}:\n{tail}")


def deepspeed_command(module: str, args: Sequence[str], num_processes: int = 2) -> list[str]:
    """`deepspeed --num_gpus N --module <module> ...`: N processes on this machine (gloo on CPU). The launcher
    runs as a module of this interpreter, as the pipeline starts it: an install without the `deepspeed` script
    beside the interpreter (pip --target, --user) still works."""
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(num_processes),
        "--master_port",
        str(free_port()),
        "--module",
        module,
        *args,
    ]


def write_json(path: Path, value) -> None:
    from rlhf.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, value)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def add_standalone_arguments(parser, out: Path, smoke_help: str) -> None:
    """--threads, --seed, --smoke and --out, which every single-process benchmark's own command line takes."""
    # One thread by default: on a shared 2-core machine two OpenMP threads contending with other processes
    # ran 8x slower than one, which would time the contention rather than the code.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--out", type=Path, default=out)


def fill_blocks(document: str, blocks: dict[str, str]) -> str:
    """RESULTS.md with each `<!-- measured: NAME -->` ... `<!-- end: NAME -->` block replaced by blocks[NAME].

    Everything outside the blocks (the headings and the prose that reads the numbers) is written by hand and kept
    as it is; a block the document lacks is appended at its end.
    """
    for name, body in blocks.items():
        begin, end = f"<!-- measured: {name} -->", f"<!-- end: {name} -->"
        filled = f"{begin}\n{body.strip()}\n{end}"
        if begin in document and end in document:
            head, rest = document.split(begin, 1)
            document = head + filled + rest.split(end, 1)[1]
        else:
            document = document.rstrip() + f"\n\n{filled}\n"
    return document


def write_results(results_dir: Path, blocks: dict[str, str]) -> None:
    """Fill RESULTS.md in `results_dir`; a directory without one starts from the repository's, prose included."""
    path = results_dir / "RESULTS.md"
    template = path if path.is_file() else REPO / "benchmarks" / "RESULTS.md"
    atomic_write_text(path, fill_blocks(template.read_text(), blocks))


def measure_and_record(
    measure, markdown, *, block: str, out: Path, results_dir: Path, workdir: Path | None, prefix: str
) -> dict:
    """`measure(workdir)` in `workdir`, or in a temporary directory removed afterwards; then its markdown printed,
    its result written to `out` and the markdown into `block` of RESULTS.md in `results_dir`."""
    with contextlib.ExitStack() as stack:
        workdir = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        workdir.mkdir(parents=True, exist_ok=True)
        result = measure(workdir)
    text = markdown(result)
    print(text)
    write_json(out, result)
    write_results(results_dir, {block: text})
    return result
