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


def _terms(weights: Sequence[float]) -> list[int]:
    """Indices of the non-zero weights (the chunks that take part)."""
    return [i for i, weight in enumerate(weights) if weight]


def linear_combination(chunks: Sequence[np.ndarray], weights: Sequence[float], divisor: float) -> np.ndarray:
    """float64 ``(sum_i weights[i] * chunks[i]) / divisor`` (weights of 0 skip their chunk).

    The sum starts from the first term itself, not from +0.0, so -0.0 stays -0.0.
    """
    terms = _terms(weights)
    if not terms:
        return np.zeros(chunks[0].shape, dtype=np.float64)
    first, rest = terms[0], terms[1:]
    out = chunks[first].astype(np.float64)
    if weights[first] != 1.0:
        np.multiply(out, np.float64(weights[first]), out=out)
    scratch = None
    for i in rest:
        if weights[i] == 1.0:
            np.add(out, chunks[i], out=out, dtype=np.float64)
            continue
        if scratch is None:
            scratch = np.empty_like(out)
        np.multiply(chunks[i], np.float64(weights[i]), out=scratch, dtype=np.float64)  # a float64 product
        np.add(out, scratch, out=out)
    if divisor != 1.0:
        np.divide(out, np.float64(divisor), out=out)
    return out


def linear_combination_torch(chunks: Sequence[Any], weights: Sequence[float], divisor: float, *,
                             out: Any = None, scratch: Any = None) -> Any:
    """:func:`linear_combination` on torch tensors (any device): same operations, same order.

    Scalars are float64 device tensors: CUDA turns a division by a host scalar into a
    multiplication by its reciprocal, which can differ in the last bit. ``out`` and
    ``scratch`` (float64, the chunks' shape) save allocations; the result is then ``out``.
    Terms are widened exactly to float64 in ``scratch`` before each addition (the CPU adds
    mixed dtypes much more slowly; the values are the same).
    """
    import torch

    terms = _terms(weights)
    if not terms:
        return torch.zeros(chunks[0].shape, dtype=torch.float64, device=chunks[0].device)
    first, rest = terms[0], terms[1:]
    device = chunks[first].device
    scalar = lambda value: torch.tensor(value, dtype=torch.float64, device=device)  # noqa: E731
    if out is None:
        out = chunks[first].to(torch.float64, copy=True)
    else:
        out.copy_(chunks[first])
    if weights[first] != 1.0:
        out.mul_(scalar(weights[first]))
    for i in rest:
        if weights[i] == 1.0 and chunks[i].dtype == torch.float64:
            out.add_(chunks[i])
            continue
        if scratch is None:
            scratch = torch.empty_like(out)
        scratch.copy_(chunks[i])  # widen first: the product is a float64 operation
        if weights[i] == 1.0:
            out.add_(scratch)
            continue
        scratch.mul_(scalar(weights[i]))
        out.add_(scratch)
    if divisor != 1.0:
        out.div_(scalar(divisor))
    return out


__all__ = ["linear_combination", "linear_combination_torch"]
