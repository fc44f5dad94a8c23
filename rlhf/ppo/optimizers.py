"""The AdamW of actor and critic: DeepSpeed's own where it applies, torch's otherwise.

    optimiser states offloaded (ZeRO offload_optimizer cpu/nvme)  DeepSpeedCPUAdam: the step runs on the host,
                                                                  vectorised (DeepSpeed refuses other optimisers there)
    CUDA                                                          FusedAdam: one multi-tensor kernel per step;
                                                                  where DeepSpeed cannot build it, torch's fused
                                                                  AdamW (also one kernel, prebuilt)
    otherwise (a CPU run without offload)                         torch.optim.AdamW, fused: one pass over each
                                                                  tensor, no temporaries (the for-loop AdamW
                                                                  makes two the size of a tensor, a whole ZeRO
                                                                  partition, and is slower)

All three are the same AdamW (decoupled weight decay, bias correction, betas 0.9/0.999); eps 1e-5 as in OpenAI's
lm-human-preferences. The first use of either DeepSpeed op compiles it (a minute or two; cached under
~/.cache/torch_extensions after). FusedAdam's build needs the CUDA toolkit's nvcc
at the version torch was built with, and DeepSpeed 0.19.8 cannot parse an architecture with a suffix in
TORCH_CUDA_ARCH_LIST ("9.0a", Hopper's own, raises ValueError: invalid literal for int(): '0a'; seen on an H200):
a build that fails falls back to torch's fused AdamW, with one line saying why, rather than stopping the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rlhf import distributed

ADAM_EPS = 1e-5
OFFLOAD_DEVICES = ("cpu", "nvme")


def choose_optimizer(ds_config: dict[str, Any], cuda: bool) -> str:
    """'cpu_adam', 'fused_adam' or 'torch_adamw' for an engine with this DeepSpeed config."""
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if offload.get("device", "none") in OFFLOAD_DEVICES:
        return "cpu_adam"
    return "fused_adam" if cuda else "torch_adamw"


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], ds_config: dict[str, Any], learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    parameters = list(parameters)
    choice = choose_optimizer(ds_config, torch.cuda.is_available())
    if choice == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(parameters, lr=learning_rate, eps=ADAM_EPS, weight_decay=weight_decay, adamw_mode=True)
    if choice == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        try:
            return FusedAdam(parameters, lr=learning_rate, eps=ADAM_EPS, weight_decay=weight_decay, adam_w_mode=True)
        except Exception as error:  # the op's JIT build: no nvcc, another CUDA version, an arch it cannot parse
            if distributed.is_main_process():
                reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
                print(
                    f"DeepSpeed's FusedAdam could not be built ({type(error).__name__}: {reason}); "
                    f"using torch's fused AdamW",
                    flush=True,
                )
    return torch.optim.AdamW(
        parameters,
        lr=learning_rate,
        eps=ADAM_EPS,
        weight_decay=weight_decay,
        fused=all(can_fuse(parameter) for parameter in parameters),
    )


def can_fuse(parameter: torch.Tensor) -> bool:
    """Whether torch's fused AdamW kernel takes this parameter (the devices and float types it is built for)."""
    return parameter.device.type in ("cpu", "cuda", "xpu", "mps") and parameter.dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
    )
