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

_BLOCK = 1 << 20  # elements per block of the norm and dot-product sums (fixed: the sums never depend on chunking)
_DOT_THRESHOLD = 0.9995
_EPS = 1e-8


class SlerpParams(MethodParams):
    """``t``: the interpolation factor, a number or per-tensor ``{filter, value}`` conditions."""

    t: Setting


class _Angle:
    """The two tensors' norms and their unit vectors' dot product, summed over blocks of ``_BLOCK`` elements.

    Feed every block to :meth:`add_norms`, then (the norms known) every block to :meth:`add_dot`,
    in order; :meth:`coefficients` then gives SLERP's two factors. Blocks are float64 copies.
    """

    def __init__(self) -> None:
        self.squares: tuple[list[float], list[float]] = ([], [])
        self.dots: list[float] = []

    def add_norms(self, x: np.ndarray, y: np.ndarray) -> None:
        self.squares[0].append(float(np.linalg.norm(x)) ** 2)
        self.squares[1].append(float(np.linalg.norm(y)) ** 2)

    def norms(self) -> tuple[float, float]:
        """Each tensor's norm (1 when below ``_EPS``: the tensor is then used as it is)."""
        norm_a, norm_b = (math.sqrt(sum(squares)) for squares in self.squares)
        return (norm_a if norm_a > _EPS else 1.0), (norm_b if norm_b > _EPS else 1.0)

    def add_dot(self, x: np.ndarray, y: np.ndarray, norms: tuple[float, float]) -> None:
        self.dots.append(float(((x / norms[0]) * (y / norms[1])).sum()))

    def coefficients(self, t: float) -> tuple[float, float]:
        """``(coef_a, coef_b)``: the soup is ``coef_a · a + coef_b · b``; nearly parallel tensors are lerped."""
        dot = min(1.0, max(-1.0, sum(self.dots)))
        if abs(dot) > _DOT_THRESHOLD:
            return 1 - t, t
        theta = math.acos(dot)
        return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


def _blocks(size: int):
    return ((start, min(size, start + _BLOCK)) for start in range(0, size, _BLOCK))


def slerp_coefficients(t: float, size: int, read) -> tuple[float, float]:
    """SLERP's factors of two flat tensors of ``size`` elements, ``read(start, stop)`` giving their blocks.

    Two passes (the norms, then the unit vectors' dot product); one read when the tensor is one block.
    """
    angle = _Angle()
    blocks = list(_blocks(size))
    last = None
    for start, stop in blocks:
        last = [c.astype(np.float64) for c in read(start, stop)]
        angle.add_norms(*last)
    norms = angle.norms()
    for start, stop in blocks:
        x, y = last if len(blocks) == 1 else [c.astype(np.float64) for c in read(start, stop)]
        angle.add_dot(x, y, norms)
    return angle.coefficients(t)


def combine(coefficients: tuple[float, float], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``coef_a · a + coef_b · b`` in float64, elementwise."""
    out = a.astype(np.float64)
    out *= coefficients[0]
    other = b.astype(np.float64)
    other *= coefficients[1]
    out += other
    return out


def slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SLERP of two whole flat tensors, treated as one vector each (the reference the streamed merge equals)."""
    coefficients = slerp_coefficients(t, a.size, lambda start, stop: (a[start:stop], b[start:stop]))
    result = np.empty(a.size, dtype=np.float64)
    for start, stop in _blocks(a.size):
        result[start:stop] = combine(coefficients, a[start:stop], b[start:stop])
    return result


class SlerpSoup(TensorMethod):
    """Spherical interpolation of exactly two ingredients, tensor by tensor, factor t.

    MergeKit 0.1.5's formula (nearly parallel tensors are interpolated linearly), computed in
    float64 and rounded once. The norms and the dot product come from a pre-pass over blocks
    fixed by the tensor's size; the merge is then elementwise.
    """

    name = "slerp"
    paper = "https://dl.acm.org/doi/10.1145/325165.325242"
    paper_title = "Animating rotation with quaternion curves (Shoemake, 1985)"
    Params = SlerpParams
    needs_prepass = True

    def setup(self, context: MergeContext) -> None:
        if context.num_ingredients != 2:
            raise MethodParameterError(f"slerp merges exactly 2 ingredients; got {context.num_ingredients} "
                                       "(use nuslerp with a base model, or another method, for more)")
        problems = settings.check(self.params.t, "t", None, math.isfinite, "t must be a finite number")
        if problems:
            raise MethodParameterError("; ".join(problems))
        self._coefficients: dict[str, tuple[float, float]] = {}

    def _t(self, key: str) -> float:
        t = settings.resolve(self.params.t, key)
        if t is None:
            raise MethodParameterError(f"method.t: no condition matches tensor {key!r}; add one without filter")
        return float(t)

    def prepare_tensor(self, info: ChunkInfo, read) -> None:
        """The tensor's two SLERP factors, from its norms and dot product summed over streamed blocks."""
        self._coefficients[info.key] = slerp_coefficients(self._t(info.key), info.stop, read)

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """``coef_a · a + coef_b · b`` over the chunk, with the tensor's factors."""
        coefficients = self._coefficients.get(info.key)
        if coefficients is None:
            raise AssertionError(f"slerp: tensor {info.key} was merged before its pre-pass "
                                 "(hf_soup.engine.prepass.prepass)")
        return combine(coefficients, chunks[0], chunks[1])

    def merge_whole(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """The same soup from the whole tensor at once (the reference the streamed merge equals)."""
        return slerp(self._t(info.key), chunks[0], chunks[1])

    def report(self) -> dict[str, Any]:
        return {}
