"""The AdamW of actor and critic: DeepSpeed's own where it applies, torch's otherwise.

    optimiser states offloaded (ZeRO offload_optimizer cpu/nvme)  DeepSpeedCPUAdam: the step runs on the host,
                                                                  vectorised (DeepSpeed refuses other optimisers there)
    CUDA                                                          FusedAdam: one multi-tensor kernel per step
    otherwise (a CPU run without offload)                         torch.optim.AdamW, fused: one pass over each
                                                                  tensor, no temporaries (the for-loop AdamW
                                                                  makes two the size of a tensor, a whole ZeRO
                                                                  partition, and is about 7x slower on a CPU)

All three are the same AdamW (decoupled weight decay, bias correction, betas 0.9/0.999); eps 1e-5 as in OpenAI's
lm-human-preferences. The first use of either DeepSpeed op compiles it (about a minute and a half for CPU Adam on
a 2-core machine; cached under ~/.cache/torch_extensions after).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

ADAM_EPS = 1e-5
OFFLOAD_DEVICES = ("cpu", "nvme")


def choose_optimizer(ds_config: dict[str, Any], cuda: bool) -> str:
    """'cpu_adam', 'fused_adam' or 'torch_adamw' for an engine with this DeepSpeed config."""
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if offload.get("device", "none") in OFFLOAD_DEVICES:
        return "cpu_adam"
    return "fused_adam" if cuda else "torch_adamw"


def build_optimizer(parameters: Iterable[torch.nn.Parameter], ds_config: dict[str, Any], learning_rate: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    parameters = list(parameters)
    choice = choose_optimizer(ds_config, torch.cuda.is_available())
    if choice == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(parameters, lr=learning_rate, eps=ADAM_EPS, weight_decay=weight_decay,
                                adamw_mode=True)
    if choice == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(parameters, lr=learning_rate, eps=ADAM_EPS, weight_decay=weight_decay, adam_w_mode=True)
    return torch.optim.AdamW(parameters, lr=learning_rate, eps=ADAM_EPS, weight_decay=weight_decay,
                             fused=all(can_fuse(parameter) for parameter in parameters))


def can_fuse(parameter: torch.Tensor) -> bool:
    """Whether torch's fused AdamW kernel takes this parameter (the devices and float types it is built for)."""
    return parameter.device.type in ("cpu", "cuda", "xpu", "mps") and parameter.dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16)
