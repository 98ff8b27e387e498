"""Comparison tolerances that follow from the dtype, not from one library version's rounding.

Two float32 implementations of the same network (different kernels, fused or split matmuls,
another summation order) agree to a few units in the last place of the *largest* value they
produce, not of each element: an error made while summing to a logit of 1,341 stays when a
small logit is read off the same row. So the bound is a number of float32 ulps of the scale.
"""

from __future__ import annotations

import torch

FLOAT32_ULPS = 32  # rounding of a few layers of fp32 GEMMs, LayerNorms and softmaxes


def assert_logits_close(got: torch.Tensor, want: torch.Tensor, ulps: int = FLOAT32_ULPS) -> None:
    """Equal within `ulps` float32 ulps of the largest magnitude in `want` (relative, as the dtype)."""
    scale = max(want.abs().max().item(), 1.0)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, want, atol=ulps * eps * scale, rtol=ulps * eps)
