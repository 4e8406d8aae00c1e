"""One streamed block of a task-vector soup, computed in per-thread buffers with single-dtype numpy passes.

The operations and their order are those of the whole-tensor path
(:meth:`~hf_soup.methods.task_vectors.TaskVectorMethod._merge_whole`), so the bytes are the
same; what differs is how each step is spelled: every float64 array of the block lives in a
buffer the thread keeps (no temporaries, no page faults), ``x − θ_base`` is one
``float32 − float64`` pass, multiplications by a weight of 1 are left out (exact), TIES's
``v · where(positive, v > 0, v < 0)`` is ``v · ((v > 0) == positive)`` (the same values), and
with every weight 1 the divisor (a float sum of ones and zeros) is a count summed in bytes.

>>> base = np.zeros(4, np.float32)
>>> inputs = [np.array([1, -2, 3, 0], np.float32), np.array([2, 1, -1, 0], np.float32)]
>>> elect_and_sum(block_vectors(base, inputs, [None, None], [1.0, 1.0], [1.0, 1.0]),
...               [1.0, 1.0], normalize=True)
array([ 1.5, -2. ,  3. ,  0. ])
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

#: ``keep(index, differences, out)`` fills ``out`` (bool) with ingredient ``index``'s keep mask of the block
KeepFill = Callable[[int, np.ndarray, np.ndarray], None]


class Scratch(threading.local):
    """Per-thread arrays by name, grown on demand (the views handed out alias them: use one per block)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, dtype: type, count: int) -> np.ndarray:
        size = count * np.dtype(dtype).itemsize
        array = self.arrays.get(name)
        if array is None or array.size < size:
            array = np.empty(max(size, 1), dtype=np.uint8)
            self.arrays[name] = array
        return array[:size].view(dtype)


SCRATCH = Scratch()


class BlockVectors:
    """``base`` (float64) and the weighted, sparsified task vectors ``vectors[k] = w_k · τ_k`` of one block."""

    def __init__(self, base: np.ndarray, vectors: list[np.ndarray]):
        self.base, self.vectors = base, vectors


def block_vectors(base: np.ndarray, inputs: Sequence[np.ndarray], keeps: Sequence[KeepFill | None],
                  factors: Sequence[float], weights: Sequence[float], scratch: Scratch = SCRATCH) -> BlockVectors:
    """``w_k · f_k · (mask_k · (x_k − base))`` for every ingredient, each in a buffer of ``scratch``."""
    count = base.size
    base64 = scratch.get("base", np.float64, count)
    np.copyto(base64, base)
    vectors = []
    for index, x in enumerate(inputs):
        vector = scratch.get(f"vector{index}", np.float64, count)
        np.subtract(x, base64, out=vector)
        if keeps[index] is not None:
            keep = scratch.get("keep", np.bool_, count)
            keeps[index](index, vector, keep)  # type: ignore[misc]
            np.multiply(vector, keep, out=vector)
            if factors[index] != 1.0:
                np.multiply(vector, factors[index], out=vector)
        if weights[index] != 1.0:  # x · 1 is x: left out
            np.multiply(vector, weights[index], out=vector)
        vectors.append(vector)
    return BlockVectors(base64, vectors)


def plain_sum(block: BlockVectors) -> np.ndarray:
    """``Σ_k w_k τ_k`` in ingredient order, in a new array."""
    vectors = block.vectors
    mixed = vectors[0].copy()
    for vector in vectors[1:]:
        np.add(mixed, vector, out=mixed)
    return mixed


def elect_and_sum(block: BlockVectors, weights: Sequence[float], normalize: bool,
                  scratch: Scratch = SCRATCH) -> np.ndarray:
    """TIES: the sum of the vectors whose sign agrees with their total's, divided by their weight (``normalize``).

    A new array. The vectors' buffers are overwritten (by ``vector · agree``, as the whole-tensor path does).
    """
    vectors = block.vectors
    count = vectors[0].size
    total = scratch.get("total", np.float64, count)
    if len(vectors) == 1:
        np.copyto(total, vectors[0])
    else:
        np.add(vectors[0], vectors[1], out=total)
    for vector in vectors[2:]:
        np.add(total, vector, out=total)
    positive = scratch.get("positive", np.bool_, count)
    above = scratch.get("above", np.bool_, count)
    below = scratch.get("below", np.bool_, count)
    agree = scratch.get("agree", np.bool_, count)
    np.greater_equal(total, 0, out=positive)
    counting = normalize and all(w == 1.0 for w in weights)  # Σ 1.0 · agree: a count, summed in integers
    weighing = normalize and not counting
    tally = np.uint8 if len(vectors) < 255 else np.uint32
    rising = scratch.get("rising", tally, count) if counting else None  # how many are > 0
    falling = scratch.get("falling", tally, count) if counting else None  # how many are < 0
    divisor = scratch.get("divisor", np.float64, count) if weighing else None
    counted = scratch.get("counted", np.float64, count) if weighing else None
    negative = np.logical_not(positive, out=scratch.get("negative", np.bool_, count)) if weighing else None
    mixed = np.empty(count, dtype=np.float64)
    for index, vector in enumerate(vectors):
        np.greater(vector, 0, out=above)
        if normalize:
            np.less(vector, 0, out=below)
        # v · where(positive, v > 0, v < 0) equals v · ((v > 0) == positive): the two masks differ only
        # where v is ±0 or NaN, and there v · 1 and v · 0 are the same value
        np.equal(above, positive, out=agree)
        if index == 0:
            np.multiply(vector, agree, out=mixed)
        else:
            np.multiply(vector, agree, out=vector)
            np.add(mixed, vector, out=mixed)
        if rising is not None and falling is not None:
            if index == 0:
                np.copyto(rising, above.view(np.uint8))  # (bytes to bytes: a copy, not a cast)
                np.copyto(falling, below.view(np.uint8))
            else:
                np.add(rising, above.view(np.uint8), out=rising)
                np.add(falling, below.view(np.uint8), out=falling)
        elif divisor is not None and counted is not None:
            np.logical_and(above, positive, out=above)  # where(positive, v > 0, v < 0)
            np.logical_and(below, negative, out=below)
            np.logical_or(above, below, out=agree)
            np.multiply(agree, weights[index], out=divisor if index == 0 else counted)
            if index:
                np.add(divisor, counted, out=divisor)
    if rising is not None and falling is not None:  # where(positive, rising, falling), in integers
        np.subtract(rising, falling, out=rising)
        np.multiply(rising, positive.view(np.uint8), out=rising, casting="unsafe")
        np.add(rising, falling, out=rising)
        np.add(rising, np.equal(rising, 0, out=above).view(np.uint8), out=rising)  # a divisor of 0 becomes 1
        # (20x faster than np.maximum on bytes, which numpy does not vectorise)
        divisor = scratch.get("divisor", np.float64, count)
        np.copyto(divisor, rising)
    elif divisor is not None:
        zero = np.equal(divisor, 0, out=below)
        if zero.any():
            divisor[zero] = 1
    if divisor is not None:
        np.divide(mixed, divisor, out=mixed)
    return mixed


def finish(mixed: np.ndarray, block: BlockVectors, divisor: float | None, scale: float) -> np.ndarray:
    """``base + scale · mixed / divisor`` in place (``divisor``: a scalar one, or ``None``)."""
    if divisor is not None:
        np.divide(mixed, divisor, out=mixed)
    if scale != 1:
        np.multiply(mixed, scale, out=mixed)
    np.add(mixed, block.base, out=mixed)
    return mixed


__all__ = ["SCRATCH", "BlockVectors", "Scratch", "block_vectors", "elect_and_sum", "finish", "plain_sum"]
