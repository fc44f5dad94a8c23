"""Constants and a comparison for the tests that check math against numbers worked out by hand.

softplus(-m) = -log σ(m) = log(1 + e^-m)
log(1 + e^-1) = 0.3132617,  log(1 + e^-2) = 0.1269280,  log(1 + e^-3) = 0.0485874,  log 2 = 0.6931472
"""

from __future__ import annotations

import math

import torch

NAN = float("nan")
SP1 = math.log1p(math.exp(-1))  # 0.3132617, loss of a pair with margin 1
SP2 = math.log1p(math.exp(-2))  # 0.1269280, margin 2
SP3 = math.log1p(math.exp(-3))  # 0.0485874, margin 3
LN2 = math.log(2)  # 0.6931472, margin 0


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=tol, rtol=0, equal_nan=True)
