"""benchmarks/.venv-trl100: TRL 1.0.0, the last release with PPOTrainer (as trl.experimental.ppo), in its own venv.

Our environment has a newer TRL without PPO, so the peer gets a virtual environment of its own. torch is
installed first, at our version, and a constraints file then holds it there while pip resolves TRL, so that
pip never swaps in another torch build (a CUDA one, gigabytes, on a machine without a GPU). transformers,
accelerate and datasets are held at the versions our constraints.txt tests: TRL 1.0.0 accepts them
(transformers>=4.56.2, accelerate>=1.4, datasets>=4.7), and both sides then run the same model code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO

VENV = REPO / "benchmarks" / ".venv-trl100"
TRL_VERSION = "1.0.0"
HELD = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "safetensors")


def python() -> Path:
    return VENV / "bin" / "python"


def ready() -> bool:
    return (VENV / ".installed").is_file()


def held_versions() -> list[str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version and name.strip() in HELD:
            pins[name.strip()] = version.strip()
    return [f"{name}=={version}" for name, version in pins.items()]


def ensure(log=print) -> Path:
    """The venv's python, creating the venv first when it is not there (a few minutes, from the package index)."""
    if ready():
        return python()
    log(f"creating {VENV} (trl=={TRL_VERSION}; torch held at our version)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q"]
    pins = held_versions()
    torch_pin = next(pin for pin in pins if pin.startswith("torch=="))
    subprocess.run([*pip, torch_pin], check=True)
    constraints = VENV / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([*pip, "-c", str(constraints), f"trl=={TRL_VERSION}"], check=True)
    (VENV / ".installed").write_text("\n".join(pins + [f"trl=={TRL_VERSION}"]) + "\n")
    return python()
