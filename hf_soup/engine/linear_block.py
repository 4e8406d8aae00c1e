"""Linear soups straight from the stored bytes: ``(Σ w_i x_i) / divisor`` over one block, in float64.

The general path widens every ingredient's block to float32 and hands the list to the
method. A linear soup (uniform, weighted) needs one input at a time: each ingredient is
widened into one shared scratch array and added into the float64 sum at once, so a
thread's working set is the sum plus one input (it stays in the core's cache) and every
step is a single numpy call into a buffer the thread keeps (no temporaries, no page
faults, few trips through the interpreter lock). The operations are those of
:func:`hf_soup.methods.linear_math.linear_combination`, in the same order, so the bytes
are the same.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from .chunks import ReadBuffers


def _widened(raw: np.ndarray, storage: str, buffers: ReadBuffers) -> np.ndarray:
    """``raw`` (one block of one ingredient) as exact float32 (float64 stays), in the shared scratch."""
    if storage in ("F32", "F64"):
        return raw
    scratch = buffers.get("widen", np.float32, raw.size)
    if storage == "BF16":
        np.left_shift(raw, 16, out=scratch.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(scratch, raw)
    return scratch


@lru_cache(maxsize=256)
def _scale(divisor: float) -> tuple[np.ufunc, np.float64]:
    """Divide by ``divisor`` as the reference does; by a power of two, multiply by its (exact) inverse instead.

    Both are the one correctly rounded value of ``x / 2^k``, and a multiplication is the cheaper instruction.
    """
    mantissa, _ = math.frexp(divisor)
    if abs(mantissa) == 0.5:
        return np.multiply, np.float64(1.0 / divisor)
    return np.divide, np.float64(divisor)


def combine_block(raws: Sequence[tuple[np.ndarray, str]], start: int, stop: int, weights: Sequence[float],
                  divisor: float, buffers: ReadBuffers) -> np.ndarray:
    """Elements ``[start, stop)`` of ``(Σ weights[i] * raws[i]) / divisor`` in float64 (a per-thread buffer).

    ``raws`` are ``(array, storage dtype)`` pairs as :func:`~hf_soup.engine.chunks.read_raw`
    returns them; a weight of 0 leaves its ingredient out, as in the reference.
    """
    count = stop - start
    total = buffers.get("sum", np.float64, count)
    terms = [i for i, weight in enumerate(weights) if weight]
    if not terms:
        total[...] = 0.0
        return total
    product = None
    for n, i in enumerate(terms):
        raw, storage = raws[i]
        values = _widened(raw[start:stop], storage, buffers)
        weight = np.float64(weights[i])
        if n == 0:
            if weight == 1.0:
                np.copyto(total, values)
            else:
                np.multiply(values, weight, out=total, dtype=np.float64)
        elif weight == 1.0:
            np.add(total, values, out=total, dtype=np.float64)
        else:
            product = buffers.get("product", np.float64, count) if product is None else product
            np.multiply(values, weight, out=product, dtype=np.float64)
            np.add(total, product, out=total)
    if divisor != 1.0:
        operation, operand = _scale(divisor)
        operation(total, operand, out=total)
    return total


__all__ = ["combine_block"]
