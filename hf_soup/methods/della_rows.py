"""DELLA's MagPrune masks decided chunk by chunk on whole rows: the bytes of the whole-tensor masks.

MagPrune ranks each magnitude within its row (a matrix's last dimension; a vector is one
row), so a chunk of whole rows decides its own masks: each row's ranks are those of the
whole tensor, and the draws come from the ingredient's generator advanced to the chunk's
first element (one 64-bit draw per double, as DARE's). The engine hands DELLA whole rows
(``row_length``); the l1 rescale factor takes two streamed passes over the tensor: the kept
count (it fixes the summation tree of :class:`~hf_soup.methods.streamed_stats.PairwiseSum`),
then the sums (with the first pass's masks, kept as bits up to ``MASK_CACHE_BYTES``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .streamed_stats import PairwiseSum

PREPASS_CHUNK = 1 << 18  # elements per chunk of the rescale passes (rounded to whole rows)
#: The first pass keeps its masks (a bit per element) for the second when they take at most this
#: much; a larger tensor's masks are decided again (more CPU, no more memory).
MASK_CACHE_BYTES = 32 << 20


def row_length(shape: tuple[int, ...]) -> int:
    """Elements of one MagPrune row: a matrix's last dimension, else the whole tensor (at least 1)."""
    if len(shape) >= 2:
        return max(1, shape[-1])
    return max(1, int(np.prod(shape, dtype=np.int64)))


class RowMask:
    """One ingredient's MagPrune keep mask of one tensor, for any chunk of whole rows.

    Keep probabilities run linearly from ``density - epsilon`` (smallest magnitude of its row,
    ties by position) to ``density + epsilon`` (largest), as
    :func:`~hf_soup.methods.sparsify.della` draws them for the whole tensor. ``factor`` is the
    l1 rescale factor once :func:`rescale_factors` ran.
    """

    needs_values = True

    def __init__(self, shape: tuple[int, ...], density: float, epsilon: float, rng: np.random.Generator):
        self.width = row_length(shape)
        self.density, self.epsilon, self.rng = density, epsilon, rng
        self.factor = 1.0

    def _draws(self, start: int, count: int) -> np.ndarray:
        generator = np.random.Generator(type(self.rng.bit_generator)(0))
        generator.bit_generator.state = self.rng.bit_generator.state
        generator.bit_generator.advance(start)
        return generator.random(count)

    def keep(self, start: int, stop: int, magnitudes: np.ndarray | None) -> np.ndarray:
        """The keep mask of flat elements ``[start, stop)``: whole rows, ``magnitudes`` theirs (float64)."""
        width = self.width
        if start % width or (stop - start) % width:
            raise AssertionError(f"della: elements [{start}, {stop}) are not whole rows of {width}; "
                                 "the engine cuts DELLA's work items at TensorMethod.row_length")
        assert magnitudes is not None
        rows = magnitudes.reshape(-1, width)
        order = np.argsort(rows, axis=1, kind="stable")
        ranks = np.empty(order.shape, dtype=np.float64)
        np.put_along_axis(ranks, order, np.arange(width, dtype=np.float64)[None, :], axis=1)
        del order
        span = max(width - 1, 1)
        probabilities = (self.density - self.epsilon) + (ranks / span) * (2 * self.epsilon)
        del ranks
        return (self._draws(start, stop - start).reshape(rows.shape) < probabilities).reshape(-1)


def magnitudes(chunk: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``|θ_k − θ_base|`` in float64, formed as the whole-tensor computation forms it."""
    values = chunk.astype(np.float64)
    values -= base
    np.abs(values, out=values)
    return values


def rescale_sums(rules: Sequence[RowMask | None], size: int,
                 read: Callable[[int, int], Sequence[np.ndarray]]) -> list[tuple[float, float] | None]:
    """Per ingredient: the sums of ``|τ|`` over the whole tensor and over its kept entries.

    ``read(start, stop)`` returns the base and the ingredients' elements ``[start, stop)``;
    the sums are those :func:`~hf_soup.methods.streamed_stats.pairwise_total` gives on the
    whole arrays.
    """
    width = next(rule.width for rule in rules if rule is not None)
    step = max(width, PREPASS_CHUNK - PREPASS_CHUNK % width)
    totals = [None if rule is None else PairwiseSum(size) for rule in rules]
    kept = [0] * len(rules)
    cache = size * sum(rule is not None for rule in rules) // 8 <= MASK_CACHE_BYTES
    packed: list[list[np.ndarray]] = [[] for _ in rules]
    for start in range(0, size, step):  # pass 1: the whole sums and the kept counts
        stop = min(size, start + step)
        chunks = read(start, stop)
        for k, (rule, total) in enumerate(zip(rules, totals)):
            if rule is not None:
                values = magnitudes(chunks[k + 1], chunks[0])
                total.add(values)
                keep = rule.keep(start, stop, values)
                kept[k] += int(np.count_nonzero(keep))
                if cache:
                    packed[k].append(np.packbits(keep))
    sums = [None if rule is None else PairwiseSum(kept[k]) for k, rule in enumerate(rules)]
    for n, start in enumerate(range(0, size, step)):  # pass 2: the kept sums, in the tree the kept count fixes
        stop = min(size, start + step)
        chunks = read(start, stop)
        for k, (rule, kept_sum) in enumerate(zip(rules, sums)):
            if rule is not None:
                values = magnitudes(chunks[k + 1], chunks[0])
                if cache:
                    keep = np.unpackbits(packed[k][n], count=stop - start).view(bool)
                else:
                    keep = rule.keep(start, stop, values)
                kept_sum.add(values[keep])
    return [None if rule is None else (total.result(), kept_sum.result())
            for rule, total, kept_sum in zip(rules, totals, sums)]


__all__ = ["RowMask", "magnitudes", "rescale_sums", "row_length"]
