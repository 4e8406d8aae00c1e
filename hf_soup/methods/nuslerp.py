"""NuSLERP: SLERP of two models (or, with a base model, of their task vectors) with the factor given by their
weights, per tensor, per row or per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from ..errors import MethodParameterError
from . import settings
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod
from .settings import PerIngredient
from .vector_angles import Layout, cosines

_EPS = 1e-8
_ROWS_UP_TO = 1 << 16  # rows longer than this are not kept whole per merge call (items stay bounded)


class NuSlerpParams(MethodParams):
    """``weights``: one per ingredient, t = w_2 / (w_1 + w_2). ``flatten`` (default): each tensor is
    one vector; else each row (``row_wise: false``) or each column (``row_wise: true``) is."""

    weights: PerIngredient = Field(1.0)
    flatten: bool = True
    row_wise: bool = False


@dataclass(frozen=True)
class _Factors:
    """Per vector: SLERP's sines ``sin((1 − t)θ)``, ``sin(tθ)``, ``sin θ``, and which pairs are collinear (lerped)."""

    t: float
    first: np.ndarray
    second: np.ndarray
    sine: np.ndarray
    collinear: np.ndarray

    @classmethod
    def of(cls, t: float, cosines: np.ndarray) -> "_Factors":
        cos = np.clip(cosines, -1, 1)
        collinear = (1 - cos * cos) <= _EPS ** 2
        theta = np.arccos(np.where(collinear, 0.0, cos))
        return cls(t, np.sin((1 - t) * theta), np.sin(t * theta), np.sin(theta), collinear)

    def apply(self, pick, v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
        """The SLERP of ``v0`` and ``v1`` (float64), each element with its vector's factors (``pick``: see
        :meth:`~hf_soup.methods.vector_angles.Layout.spread`)."""
        t = self.t
        with np.errstate(divide="ignore", invalid="ignore"):
            result = (pick(self.first) * v0 + pick(self.second) * v1) / pick(self.sine)
        return np.where(pick(self.collinear), (1 - t) * v0 + t * v1, result)


class NuSlerpSoup(TensorMethod):
    """SLERP of two ingredients (or of their task vectors, with a base) at t = w_2 / (w_1 + w_2).

    MergeKit 0.1.5's ``nuslerp``, computed in float64 and rounded once. Each vector's cosine
    comes from a pre-pass over blocks fixed by the tensor's shape
    (:mod:`~hf_soup.methods.vector_angles`); the merge is then elementwise.
    """

    name = "nuslerp"
    Params = NuSlerpParams
    needs_prepass = True
    uses_base = "optional"

    def setup(self, context: MergeContext) -> None:
        self.has_base = context.base is not None
        if context.num_ingredients != 2:
            raise MethodParameterError(f"nuslerp merges exactly 2 ingredients (besides an optional base_model); "
                                       f"got {context.num_ingredients}")
        problems = settings.check(self.params.weights, "weights", 2, math.isfinite, "weights must be finite numbers")
        if problems:
            raise MethodParameterError("; ".join(problems))
        self._factors: dict[str, _Factors] = {}

    def _t(self, key: str) -> float:
        w0, w1 = (float(w) for w in settings.per_ingredient(self.params.weights, 2, key))
        total = w0 + w1
        return 0.5 if abs(total) < 1e-6 else w1 / total

    def _layout(self, shape: tuple[int, ...]) -> Layout:
        return Layout.of(shape, self.params.flatten, self.params.row_wise)

    def _vectors(self, chunks: Sequence[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """The base (or ``None``) and the two vectors to interpolate, float64 (task vectors with a base)."""
        base = chunks[0] if getattr(self, "has_base", False) else None
        v0, v1 = (c.astype(np.float64) for c in chunks[-2:])
        if base is not None:
            v0 -= base
            v1 -= base
        return base, v0, v1

    def prepare_tensor(self, info: ChunkInfo, read) -> None:
        """Each vector's SLERP factors, from cosines summed over streamed blocks (:mod:`.vector_angles`)."""
        if info.stop == 0:
            return
        layout = self._layout(info.shape)
        found = cosines(layout, lambda start, stop: self._vectors(read(start, stop))[1:])
        self._factors[info.key] = _Factors.of(self._t(info.key), found)

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """The SLERP of the chunk's elements with their vectors' factors (plus the base, with one)."""
        if chunks[0].size == 0:
            return np.empty(0, dtype=np.float64)
        factors = self._factors.get(info.key)
        if factors is None:
            raise AssertionError(f"nuslerp: tensor {info.key} was merged before its pre-pass "
                                 "(hf_soup.engine.prepass.prepass)")
        base, v0, v1 = self._vectors(chunks)
        pick, shape = self._layout(info.shape).spread(info.start, info.stop)
        merged = factors.apply(pick, v0.reshape(shape), v1.reshape(shape)).reshape(-1)
        return merged if base is None else base + merged

    def row_length(self, shape: tuple[int, ...]) -> int:
        """Whole rows per merge call when the vectors are rows or columns (no per-element lookups)."""
        layout = self._layout(shape)
        return layout.width if layout.count > 1 and layout.width <= _ROWS_UP_TO else 1

    def merge_whole(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """The same soup from the whole tensor at once (the reference the streamed merge equals)."""
        self.prepare_tensor(info, lambda start, stop: [c[start:stop] for c in chunks])
        return self.merge(ChunkInfo(info.key, info.shape, 0, info.stop), chunks)

    def report(self) -> dict[str, Any]:
        return {"base_relative": getattr(self, "has_base", False)}
