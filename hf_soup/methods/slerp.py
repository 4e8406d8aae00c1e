"""SLERP: spherical linear interpolation between two models, tensor by tensor (``t = 0``: the first ingredient, ``t
= 1``: the second).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import MethodParameterError
from . import settings
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod
from .settings import Setting

_BLOCK = 1 << 20  # elements per block of the norm and dot-product sums (bounds float64 scratch)
_DOT_THRESHOLD = 0.9995
_EPS = 1e-8


class SlerpParams(MethodParams):
    """``t``: the interpolation factor, a number or per-tensor ``{filter, value}`` conditions."""

    t: Setting


def _blocks(x: np.ndarray):
    """``x`` in float64 blocks of ``_BLOCK`` elements (the norms and the dot product are summed per block)."""
    for start in range(0, x.size, _BLOCK):
        yield x[start : start + _BLOCK].astype(np.float64)


def slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SLERP of two flat tensors, treated as one vector each; nearly parallel ones are lerped."""
    norm_a = math.sqrt(sum(float(np.linalg.norm(block)) ** 2 for block in _blocks(a)))
    norm_b = math.sqrt(sum(float(np.linalg.norm(block)) ** 2 for block in _blocks(b)))
    norm_a = norm_a if norm_a > _EPS else 1.0
    norm_b = norm_b if norm_b > _EPS else 1.0
    dot = sum(float(((x / norm_a) * (y / norm_b)).sum()) for x, y in zip(_blocks(a), _blocks(b)))
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > _DOT_THRESHOLD:
        coef_a, coef_b = 1 - t, t
    else:
        theta = math.acos(dot)
        coef_a, coef_b = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    result = np.empty(a.size, dtype=np.float64)
    for start, (x, y) in zip(range(0, a.size, _BLOCK), zip(_blocks(a), _blocks(b))):
        x *= coef_a
        y *= coef_b
        x += y
        result[start : start + _BLOCK] = x
    return result


class SlerpSoup(TensorMethod):
    """Spherical interpolation of exactly two ingredients, tensor by tensor, factor t.

    MergeKit 0.1.5's formula (nearly parallel tensors are interpolated linearly), computed in
    float64 and rounded once.
    """

    name = "slerp"
    paper = "https://dl.acm.org/doi/10.1145/325165.325242"
    paper_title = "Animating rotation with quaternion curves (Shoemake, 1985)"
    Params = SlerpParams
    whole_tensor = True

    def setup(self, context: MergeContext) -> None:
        if context.num_ingredients != 2:
            raise MethodParameterError(f"slerp merges exactly 2 ingredients; got {context.num_ingredients} "
                                       "(use nuslerp with a base model, or another method, for more)")
        problems = settings.check(self.params.t, "t", None, math.isfinite, "t must be a finite number")
        if problems:
            raise MethodParameterError("; ".join(problems))

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        t = settings.resolve(self.params.t, info.key if info else "")
        if t is None:
            raise MethodParameterError(f"method.t: no condition matches tensor {info.key!r}; add one without filter")
        t = float(t)
        return slerp(t, chunks[0], chunks[1])

    def report(self) -> dict[str, Any]:
        return {}
