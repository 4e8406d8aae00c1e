"""Model Stock (Jang et al., 2024): from the angle between a few fine-tunes' offsets to the base, the ratio t that
moves their average toward the base — a soup for "just a few fine-tuned models".
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import numpy as np

from ..errors import MethodParameterError
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod


class ModelStockParams(MethodParams):
    """``filter_wise``: one angle and ratio per row of a matrix instead of per tensor."""

    filter_wise: bool = False


class ModelStockSoup(TensorMethod):
    """t · mean_k θ_k + (1 − t) · θ_base, t = N cos / (1 + (N − 1) cos) from the offsets' mean cosine.

    ``cos`` is the mean pairwise cosine of the offsets ``θ_k − θ_base``; the base is kept where
    ``1 + (N − 1) cos ≈ 0``. Computed in float64 with MergeKit 0.1.5's operations, rounded once.
    """

    name = "model_stock"
    paper = "https://arxiv.org/abs/2403.19522"
    paper_title = "Model Stock: All we need is just a few fine-tuned models (Jang et al., ECCV 2024)"
    Params = ModelStockParams
    whole_tensor = True
    uses_base = "required"

    def setup(self, context: MergeContext) -> None:
        if context.num_ingredients < 2:
            raise MethodParameterError(
                f"model_stock needs at least 2 fine-tuned ingredients besides the base; got {context.num_ingredients}")

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        shape = info.shape if info is not None else (chunks[0].size,)
        if chunks[0].size == 0:
            return np.empty(0, dtype=np.float64)
        columns = shape[-1] if self.params.filter_wise and len(shape) >= 2 else chunks[0].size
        base, inputs = chunks[0].reshape(-1, columns), [c.reshape(-1, columns) for c in chunks[1:]]
        t = self._ratio(base, inputs)
        out = np.empty(base.shape, dtype=np.float64)
        for rows, cols in _blocks(base.shape):  # t · mean_k θ_k + (1 − t) · θ_base, block by block
            average = inputs[0][rows, cols].astype(np.float64)
            for x in inputs[1:]:
                average += x[rows, cols]
            average /= len(inputs)
            average *= t[rows]
            average += (1 - t[rows]) * base[rows, cols]
            out[rows, cols] = average
        return out.reshape(-1)

    @staticmethod
    def _ratio(base: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
        """Per row: t = N cos / (1 + (N − 1) cos), cos the mean pairwise cosine of the offsets (0 where singular)."""
        count = len(inputs)
        pairs = list(combinations(range(count), 2))
        squares = np.zeros((count, base.shape[0]))
        dots = np.zeros((len(pairs), base.shape[0]))
        for rows, cols in _blocks(base.shape):  # norms and dot products summed block by block
            offsets = [x[rows, cols].astype(np.float64) - base[rows, cols] for x in inputs]
            for i, offset in enumerate(offsets):
                squares[i, rows] += np.einsum("ij,ij->i", offset, offset)
            for n, (i, j) in enumerate(pairs):
                dots[n, rows] += np.einsum("ij,ij->i", offsets[i], offsets[j])
        norms = np.sqrt(squares)
        cosines = [np.clip(dots[n] / np.maximum(norms[i] * norms[j], 1e-6), -1, 1) for n, (i, j) in enumerate(pairs)]
        cos = (sum(cosines[1:], cosines[0]) / len(cosines))[:, None]
        denominator = 1 + (count - 1) * cos
        singular = np.abs(denominator) < 1e-6
        return np.where(singular, 0.0, count * cos / np.where(singular, 1.0, denominator))

    def report(self) -> dict[str, Any]:
        return {"base_relative": True}


_BLOCK = 1 << 20  # elements per block (bounds the float64 scratch)


def _blocks(shape: tuple[int, int]):
    """(rows, columns) slices covering a 2-D array in blocks of about ``_BLOCK`` elements: whole rows
    when a row fits, else column ranges of a single row."""
    height, width = shape
    if width <= _BLOCK:
        step = max(1, _BLOCK // max(width, 1))
        for start in range(0, height, step):
            yield slice(start, start + step), slice(None)
    else:
        for row in range(height):
            for start in range(0, width, _BLOCK):
                yield slice(row, row + 1), slice(start, start + _BLOCK)
