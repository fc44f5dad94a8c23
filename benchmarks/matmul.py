"""The machine's dense matmul throughput: the ceiling the PPO training phase's FLOP/s is a share of.

A square torch.matmul in the training dtype, on the threads the benchmarks use, measured in the same run
(the machine is shared, so a number from another day would compare unlike with unlike).
"""

from __future__ import annotations

import time

import torch


def matmul_flops(sizes=(256, 512, 1024), repeats: int = 5, dtype=torch.float32, device: str = "cpu") -> dict:
    """Best FLOP/s over `sizes` (2·n³ per product; the median of `repeats` timings at each size)."""
    rows = []
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        torch.matmul(a, b)  # warm-up: first-call allocation and kernel choice
        seconds = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.matmul(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        seconds.sort()
        rows.append({"n": n, "seconds": seconds[len(seconds) // 2], "flops": 2 * n**3 / seconds[len(seconds) // 2]})
    best = max(rows, key=lambda row: row["flops"])
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "threads": torch.get_num_threads(),
        "peak_flops": best["flops"],
        "by_size": rows,
    }
