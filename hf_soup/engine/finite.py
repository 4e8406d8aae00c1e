"""Non-finite values: NaN / Inf in the ingredients, and merged values the output dtype cannot hold.

Either is refused by default (a soup of a diverged checkpoint is garbage, and a float16
soup with ``inf`` in it breaks at inference), naming the ingredient, the tensor and the
count; with ``allow_nonfinite`` the merge goes on. The counts go into the report either way.

The engine calls :func:`observe` once per merged chunk, where it converts the chunk to the
output dtype; a run turns the check on with :func:`guarding`. Checks are cheap in the
common case: one float64 sum per input chunk (NaN and Inf survive a sum, and float64 cannot
overflow on float32 inputs) and a min / max of the output; elements are counted only when
those say something is wrong.

>>> import numpy as np
>>> count_nonfinite(np.array([1.0, np.nan, np.inf], dtype=np.float32))
2
>>> count_overflow(np.array([65504.0, 65520.0, -1e6], dtype=np.float32), "F16")
2
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..errors import NonFiniteError
from ..io import dtypes

# The smallest magnitude that rounds to infinity (round to nearest even) in each narrow float dtype.
OVERFLOW_AT = {"F16": 65520.0, "BF16": float(np.float32((2 - 2**-8) * 2.0**127)), "F32": (2 - 2**-24) * 2.0**127}


def count_nonfinite(values: np.ndarray) -> int:
    """The number of NaN / Inf elements of a float array."""
    # a sum in the array's own dtype is one vectorised pass; it is finite unless some element
    # is not, or the sum overflowed (then count exactly)
    if values.size == 0 or np.isfinite(np.add.reduce(values)):
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def count_overflow(values: np.ndarray, dtype: str) -> int:
    """The number of finite ``values`` (float32 or float64) that become ``inf`` when stored as ``dtype``."""
    limit = OVERFLOW_AT.get(dtype)
    if limit is None or values.size == 0:
        return 0
    low, high = values.min(), values.max()
    if -limit < low and high < limit:  # False for NaN too: then count exactly
        return 0
    return int(np.count_nonzero(np.isfinite(values) & (np.abs(values) >= limit)))


def within_range(values: np.ndarray, dtype: str) -> bool:
    """Whether every element of ``values`` is finite and stays finite when stored as ``dtype``.

    Two read-only reductions (minimum, maximum; NaN propagates through both): the quick
    check of a linear soup's result. ``False`` means "look closer", not "bad".
    """
    if values.size == 0:
        return True
    low, high = np.minimum.reduce(values), np.maximum.reduce(values)
    limit = OVERFLOW_AT.get(dtype, np.inf)
    return bool(-limit < low and high < limit)


class FiniteGuard:
    """Counts for one run; raises at the end of the first tensor with a problem unless ``allow``."""

    def __init__(self, names: Sequence[str], allow: bool = False):
        self.names, self.allow = list(names), allow
        self.inputs: dict[str, dict[str, int]] = {}  # ingredient name -> tensor key -> count
        self.overflow: dict[str, int] = {}  # tensor key -> count
        self.dtypes: dict[str, str] = {}
        self._lock = threading.Lock()  # the engine's worker threads report at once

    def observe(self, key: str, arrays: Sequence[np.ndarray], indices: Sequence[int], values: np.ndarray,
                dtype: str, last: bool = True) -> None:
        """Count one chunk: ``arrays`` are the inputs (ingredients ``indices``), ``values`` the merge."""
        counts = [(index, count_nonfinite(array)) for array, index in zip(arrays, indices)]
        overflow = count_overflow(values, dtype)
        with self._lock:
            for index, found in counts:
                if found:
                    per_tensor = self.inputs.setdefault(self.names[index], {})
                    per_tensor[key] = per_tensor.get(key, 0) + found
            if overflow:
                self.overflow[key] = self.overflow.get(key, 0) + overflow
                self.dtypes[key] = dtype
            if last and not self.allow:
                self.check(key)

    def check(self, key: str) -> None:
        """Raise :class:`NonFiniteError` when tensor ``key`` had non-finite inputs or overflowed."""
        for name, per_tensor in self.inputs.items():
            if per_tensor.get(key):
                raise NonFiniteError(
                    f"ingredient {name}: {per_tensor[key]} non-finite value(s) (NaN or Inf) in tensor {key!r}; the "
                    "checkpoint may have diverged — leave it out, or pass --allow-nonfinite (allow_nonfinite: true) "
                    "to merge anyway"
                )
        if self.overflow.get(key):
            dtype = dtypes.TORCH_NAMES.get(self.dtypes[key], self.dtypes[key])
            raise NonFiniteError(
                f"tensor {key!r}: {self.overflow[key]} merged value(s) overflow {dtype} (they would be stored as "
                "inf); write the soup in a wider dtype (--dtype bfloat16 or float32), or pass --allow-nonfinite "
                "(allow_nonfinite: true) to store them as inf"
            )

    def report(self) -> dict[str, Any]:
        """``{"allowed", "inputs": {name: {key: n}}, "overflow": {key: n}, "total"}`` for the soup report."""
        total = sum(n for per in self.inputs.values() for n in per.values()) + sum(self.overflow.values())
        return {"allowed": self.allow, "inputs": self.inputs, "overflow": self.overflow, "total": total}

    def merge_counts(self, other: dict[str, Any]) -> None:
        """Add another process's :meth:`report` counts (multi-process runs)."""
        for name, per in other.get("inputs", {}).items():
            mine = self.inputs.setdefault(name, {})
            for key, n in per.items():
                mine[key] = mine.get(key, 0) + n
        for key, n in other.get("overflow", {}).items():
            self.overflow[key] = self.overflow.get(key, 0) + n


_current: ContextVar[FiniteGuard | None] = ContextVar("hf_soup_finite_guard", default=None)


@contextmanager
def guarding(guard: FiniteGuard) -> Iterator[FiniteGuard]:
    """Within the block, every merged chunk the engine writes is checked by ``guard``."""
    token = _current.set(guard)
    try:
        yield guard
    finally:
        _current.reset(token)


def current() -> FiniteGuard | None:
    """The guard of the run in progress in this context (``None`` when none checks)."""
    return _current.get()


def observe(key: str, arrays: Sequence[np.ndarray], indices: Sequence[int], values: np.ndarray, dtype: str,
            last: bool = True) -> None:
    """The engine's hook: check one merged chunk when a run is :func:`guarding` (else nothing)."""
    guard = _current.get()
    if guard is not None:
        guard.observe(key, arrays, indices, values, dtype, last)
