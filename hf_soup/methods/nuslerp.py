"""NuSLERP: SLERP of two models (or, with a base model, of their task vectors) with the factor given by their
weights, per tensor, per row or per column.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from ..errors import MethodParameterError
from . import settings
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod
from .settings import PerIngredient

_EPS = 1e-8


class NuSlerpParams(MethodParams):
    """``weights``: one per ingredient, t = w_2 / (w_1 + w_2). ``flatten`` (default): each tensor is
    one vector; else each row (``row_wise: false``) or each column (``row_wise: true``) is."""

    weights: PerIngredient = Field(1.0)
    flatten: bool = True
    row_wise: bool = False


def nuslerp(t: float, v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """SLERP of the rows of ``v0`` and ``v1`` (float64); collinear rows are lerped."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-7)

    cos = np.clip(np.einsum("ij,ij->i", unit(v0), unit(v1))[:, None], -1, 1)
    collinear = (1 - cos * cos) <= _EPS ** 2
    theta = np.arccos(np.where(collinear, 0.0, cos))
    with np.errstate(divide="ignore", invalid="ignore"):
        result = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)
    return np.where(collinear, (1 - t) * v0 + t * v1, result)


class NuSlerpSoup(TensorMethod):
    """SLERP of two ingredients (or of their task vectors, with a base) at t = w_2 / (w_1 + w_2).

    MergeKit 0.1.5's ``nuslerp``, computed in float64 and rounded once.
    """

    name = "nuslerp"
    Params = NuSlerpParams
    whole_tensor = True
    uses_base = "optional"

    def setup(self, context: MergeContext) -> None:
        self.has_base = context.base is not None
        if context.num_ingredients != 2:
            raise MethodParameterError(f"nuslerp merges exactly 2 ingredients (besides an optional base_model); "
                                       f"got {context.num_ingredients}")
        problems = settings.check(self.params.weights, "weights", 2, math.isfinite, "weights must be finite numbers")
        if problems:
            raise MethodParameterError("; ".join(problems))

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        shape = info.shape if info is not None and info.shape else (chunks[0].size,)
        w0, w1 = (float(w) for w in settings.per_ingredient(self.params.weights, 2, info.key if info else ""))
        total = w0 + w1
        t = 0.5 if abs(total) < 1e-6 else w1 / total
        if chunks[0].size == 0:
            return np.empty(0, dtype=np.float64)
        base = chunks[0].astype(np.float64) if getattr(self, "has_base", False) else None
        a, b = (c.astype(np.float64) for c in chunks[-2:])
        if base is not None:
            a -= base
            b -= base
        if self.params.flatten:
            a, b = a.reshape(1, -1), b.reshape(1, -1)
            merged = nuslerp(t, a, b).reshape(-1)
        else:
            a, b = a.reshape(shape), b.reshape(shape)
            if self.params.row_wise and len(shape) >= 2:
                a, b = np.swapaxes(a, 0, -1), np.swapaxes(b, 0, -1)
            merged = nuslerp(t, a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])).reshape(a.shape)
            if self.params.row_wise and len(shape) >= 2:
                merged = np.swapaxes(merged, 0, -1)
            merged = np.ascontiguousarray(merged).reshape(-1)
        if base is not None:
            merged = base + merged
        return merged

    def report(self) -> dict[str, Any]:
        return {"base_relative": getattr(self, "has_base", False)}
