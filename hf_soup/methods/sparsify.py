"""Which entries of a task vector to keep: magnitude top-k, outliers, random (DARE), DELLA.

Each function takes the magnitudes ``|τ|`` of a flat float64 task vector and returns a
boolean ``keep`` mask (``None``: keep all); the kept entries are then rescaled by
:func:`l1_factor` when the method rescales.
Selections by magnitude are exact and deterministic: ties are broken by position (a
stable sort), and a selection is found in linear time, never by a full sort. Random
masks come from :func:`rng_for`, seeded by the recipe's seed, the tensor's name and the
ingredient's position, so they do not depend on chunking, process count or device.

>>> magnitude(np.array([0.1, 3.0, 2.0, 0.5]), 0.5)
array([False,  True,  True, False])
"""

from __future__ import annotations

import hashlib

import numpy as np

from .streamed_stats import pairwise_total

_EPS = 1e-7  # below this l1 norm a tensor is not rescaled (as in MergeKit)


def rank_mask(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Entries whose stable ascending rank (ties ordered by position) is in ``[lo, hi)``."""
    lo, hi = max(0, lo), min(values.size, hi)
    if lo >= hi:
        return np.zeros(values.size, dtype=bool)
    kth = [lo, hi - 1] if lo > 0 else [hi - 1]
    part = np.partition(values, kth)
    low, high = (part[lo] if lo > 0 else None), part[hi - 1]
    del part
    mask = values < high
    below_high = int(np.count_nonzero(mask))
    if low is not None:
        above_low = values > low
        below_low = int(values.size - np.count_nonzero(above_low) - np.count_nonzero(values == low))
        mask &= above_low
        del above_low
    for bound, below in ([(low, below_low)] if low is not None and low != high else []) + [(high, below_high)]:
        equal = np.flatnonzero(values == bound)
        ranks = below + np.arange(equal.size)
        mask[equal[(ranks >= lo) & (ranks < hi)]] = True
    return mask


def magnitude(magnitudes: np.ndarray, density: float) -> np.ndarray | None:
    """Keep the ``density`` fraction of largest magnitudes (at least one)."""
    if density >= 1:
        return None
    k = max(1, int(density * magnitudes.size))
    np.negative(magnitudes, out=magnitudes)  # descending order, ties by position; restored below (exact)
    try:
        return rank_mask(magnitudes, 0, k)
    finally:
        np.negative(magnitudes, out=magnitudes)


def magnitude_outliers(magnitudes: np.ndarray, density: float, gamma: float) -> np.ndarray | None:
    """Model Breadcrumbs: drop the ``gamma`` fraction of largest magnitudes, then the smallest down to ``density``."""
    if density >= 1:
        return None
    size = magnitudes.size
    target, top = int(density * size), int(gamma * size)
    bottom = max(0, size - target - top)
    return rank_mask(magnitudes, bottom, bottom + target)


def rng_for(seed: int, key: str, index: int) -> np.random.Generator:
    """The random generator of ingredient ``index``'s tensor ``key`` under recipe ``seed``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, index, *words])))


def bernoulli(size: int, density: float, rng: np.random.Generator) -> np.ndarray | None:
    """DARE: keep each entry with probability ``density``."""
    if density >= 1:
        return None
    return rng.random(size) < density


def della(magnitudes: np.ndarray, shape: tuple[int, ...], density: float, epsilon: float,
          rng: np.random.Generator) -> np.ndarray | None:
    """DELLA (MagPrune): keep probabilities from ``density - epsilon`` (smallest magnitude in
    its row) to ``density + epsilon`` (largest), linear in the magnitude's rank within the row."""
    if density >= 1:
        return None
    if magnitudes.size == 0:
        return np.zeros(0, dtype=bool)
    rows = magnitudes.reshape(-1 if len(shape) >= 2 else 1, shape[-1] if len(shape) >= 2 else magnitudes.size)
    order = np.argsort(rows, axis=1, kind="stable")
    ranks = np.empty(order.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, np.arange(rows.shape[1], dtype=np.float64)[None, :], axis=1)
    del order
    span = max(rows.shape[1] - 1, 1)
    probabilities = (density - epsilon) + (ranks / span) * (2 * epsilon)
    del ranks
    return (rng.random(rows.shape) < probabilities).reshape(-1)


def l1_factor(magnitudes: np.ndarray, keep: np.ndarray) -> float:
    """The factor that gives the kept entries the l1 norm of the whole task vector (1 when either is ~0)."""
    before = pairwise_total(magnitudes)  # the streamed path's summation order, on any numpy
    after = pairwise_total(magnitudes[keep])
    if before < _EPS or after < _EPS:
        return 1.0
    return before / after
