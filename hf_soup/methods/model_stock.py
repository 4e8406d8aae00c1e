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
    Params = ModelStockParams
    whole_tensor = True
    uses_base = "required"

    def setup(self, context: MergeContext) -> None:
        if context.num_ingredients < 2:
            raise MethodParameterError(
                f"model_stock needs at least 2 fine-tuned ingredients besides the base; got {context.num_ingredients}")

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        shape = info.shape if info is not None else (chunks[0].size,)
        rows = (-1, shape[-1]) if self.params.filter_wise and len(shape) >= 2 else (1, -1)
        base = chunks[0].reshape(rows)  # float32, promoted exactly where it meets float64
        inputs = [chunk.reshape(rows) for chunk in chunks[1:]]
        count = len(inputs)

        def offset(index: int) -> np.ndarray:
            return inputs[index].astype(np.float64) - base

        norms = [np.linalg.norm(offset(i), axis=-1) for i in range(count)]
        cosines = []
        for i, j in combinations(range(count), 2):
            dots = np.einsum("ij,ij->i", offset(i), offset(j))
            cosines.append(np.clip(dots / np.maximum(norms[i] * norms[j], 1e-6), -1, 1))
        cos = (sum(cosines[1:], cosines[0]) / len(cosines))[:, None]
        denominator = 1 + (count - 1) * cos
        singular = np.abs(denominator) < 1e-6
        t = np.where(singular, 0.0, count * cos / np.where(singular, 1.0, denominator))
        average = inputs[0].astype(np.float64)
        for chunk in inputs[1:]:
            average += chunk
        average /= count
        average *= t
        average += (1 - t) * base
        return average.reshape(-1)

    def report(self) -> dict[str, Any]:
        return {"base_relative": True}
