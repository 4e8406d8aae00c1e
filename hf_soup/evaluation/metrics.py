"""Metrics on scored rows: ``logits`` ``(M, C)`` and integer ``labels`` ``(M,)``.

A row is an example (classification) or a scored token position (causal LM). The
built-in metrics reduce to three sums — correct predictions, negative log-likelihood
and the number of rows — so they can be accumulated batch by batch and across
processes; a callable metric sees all rows at once.

>>> import numpy as np
>>> Metric.from_spec("accuracy").score(np.array([[2., 0.], [0., 1.]]), np.array([0, 0]))
0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

_ROWS_PER_CHUNK = 4096


@dataclass
class Totals:
    """Running sums of the built-in metrics."""

    correct: float = 0.0
    nll: float = 0.0
    count: int = 0

    def add(self, correct: float, nll: float, count: int) -> None:
        self.correct += float(correct)
        self.nll += float(nll)
        self.count += int(count)


def row_statistics(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-row ``(correct, nll)`` as float tensors, computed in float32 with torch."""
    import torch

    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels).long()
    correct = (logits.argmax(dim=-1) == labels).float()
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return correct, nll


@dataclass
class Metric:
    """A named metric with its direction; ``fn`` is set for a callable metric."""

    name: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float] | None = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, metric: Any, higher_is_better: bool | None = None) -> "Metric":
        """Build from an :class:`EvaluationSpec` ``metric`` value (name or callable)."""
        if callable(metric):
            return cls(getattr(metric, "__name__", "custom"), True if higher_is_better is None else higher_is_better, metric)
        default = metric not in ("loss", "perplexity")
        return cls(metric, default if higher_is_better is None else higher_is_better)

    @property
    def needs_all_rows(self) -> bool:
        """Whether the metric needs every row's logits (a callable) rather than running sums."""
        return self.fn is not None

    def from_totals(self, totals: Totals) -> float:
        """The built-in metric's value from running sums."""
        if totals.count == 0:
            return float("nan")
        if self.name == "accuracy":
            return totals.correct / totals.count
        mean_nll = totals.nll / totals.count
        return math.exp(mean_nll) if self.name == "perplexity" else mean_nll

    def score(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """The metric of ``logits`` ``(M, C)`` against ``labels`` ``(M,)`` (NumPy or torch)."""
        if self.fn is not None:
            return float(self.fn(np.asarray(logits, dtype=np.float32), np.asarray(labels)))
        totals = Totals()
        for start in range(0, len(labels), _ROWS_PER_CHUNK):
            stop = start + _ROWS_PER_CHUNK
            correct, nll = row_statistics(np.asarray(logits[start:stop], dtype=np.float32), np.asarray(labels[start:stop]))
            totals.add(correct.sum().item(), nll.sum().item(), len(correct))
        return self.from_totals(totals)

    def better(self, a: float, b: float, strict: bool = True) -> bool:
        """Whether score ``a`` beats ``b`` (``strict=False``: or ties it). NaN never wins."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        if self.higher_is_better:
            return a > b if strict else a >= b
        return a < b if strict else a <= b

    def sort_key(self, score: float) -> float:
        """A key that sorts best first with ``sorted(..., key=metric.sort_key)``; NaN last."""
        if math.isnan(score):
            return math.inf
        return -score if self.higher_is_better else score


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); ``None`` with < 3 pairs or no spread."""
    if len(a) != len(b) or len(a) < 3:
        return None

    def ranks(values: list[float]) -> np.ndarray:
        values_arr = np.asarray(values, dtype=np.float64)
        order = np.argsort(values_arr, kind="mergesort")
        out = np.empty(len(values_arr))
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values_arr[order[j + 1]] == values_arr[order[i]]:
                j += 1
            out[order[i : j + 1]] = (i + j) / 2.0
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])
