"""The float64 arithmetic of linear soups, written once for numpy (host) and once for torch (device).

``(sum_i w_i * x_i) / divisor``: each product and each sum is one float64 operation, the
division comes last and the engine rounds the float64 result once to the output dtype.
For float32, float16 and bfloat16 inputs the products by small integers (uniform soups)
and the sums are exact in float64, so a uniform soup is the exact mean rounded once
(a checkpoint souped with itself is that checkpoint, bit for bit); with other weights
the float64 error (about 1e-16 relative) decides the rounding only for values within
that distance of a rounding midpoint. Both versions run the same operations in the same
order, and IEEE float64 add, multiply and divide are correctly rounded on CPUs and GPUs
alike, so host and device give the same bytes (no fused multiply-add is ever requested).

>>> import numpy as np
>>> linear_combination([np.array([1.0], "f4")] * 3, [1.0, 1.0, 1.0], 3.0)
array([1.])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def linear_combination(chunks: Sequence[np.ndarray], weights: Sequence[float], divisor: float) -> np.ndarray:
    """float64 ``(sum_i weights[i] * chunks[i]) / divisor`` (weights of 0 skip their chunk)."""
    out = np.zeros(chunks[0].shape, dtype=np.float64)
    scratch = None
    for weight, chunk in zip(weights, chunks):
        if weight == 1.0:
            np.add(out, chunk, out=out, dtype=np.float64)
        elif weight:
            if scratch is None:
                scratch = np.empty_like(out)
            np.multiply(chunk, np.float64(weight), out=scratch, dtype=np.float64)  # a float64 product
            np.add(out, scratch, out=out)
    if divisor != 1.0:
        np.divide(out, np.float64(divisor), out=out)
    return out


def linear_combination_torch(chunks: Sequence[Any], weights: Sequence[float], divisor: float) -> Any:
    """:func:`linear_combination` on torch tensors (any device): same operations, same order.

    Scalars are float64 device tensors: CUDA turns a division by a host scalar into a
    multiplication by its reciprocal, which can differ in the last bit.
    """
    import torch

    device = chunks[0].device
    out = torch.zeros(chunks[0].shape, dtype=torch.float64, device=device)
    scratch = torch.empty_like(out)
    for weight, chunk in zip(weights, chunks):
        if weight == 1.0:
            out.add_(chunk)
        elif weight:
            scratch.copy_(chunk)  # widen first: the product is a float64 operation
            scratch.mul_(torch.tensor(weight, dtype=torch.float64, device=device))
            out.add_(scratch)
    if divisor != 1.0:
        out.div_(torch.tensor(divisor, dtype=torch.float64, device=device))
    return out


__all__ = ["linear_combination", "linear_combination_torch"]
