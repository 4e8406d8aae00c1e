"""Weighted soup: a fixed linear combination of the ingredients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from pydantic import Field, field_validator

from ..errors import MethodParameterError
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod
from .linear_math import linear_combination, linear_combination_torch

if TYPE_CHECKING:
    import torch


class WeightedParams(MethodParams):
    """``weights``: one number per ingredient. ``normalize``: divide by their sum.

    ``per_tensor`` (Python API and data-driven plans) overrides ``weights`` for the
    named tensors, e.g. the layer-wise coefficients of a learned soup.
    """

    weights: list[float] = Field(min_length=1)
    normalize: bool = True
    per_tensor: dict[str, list[float]] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _finite(cls, weights: list[float]) -> list[float]:
        if not all(np.isfinite(weights)):
            raise ValueError("every weight must be a finite number")
        return weights


class WeightedSoup(TensorMethod):
    """``sum_i w_i * x_i`` per tensor, divided by ``sum_i w_i`` by default (``normalize``).

    The sum is taken in float64 with the raw weights and divided once at the end (weights
    normalised first would round twice); the engine rounds the result once.

    >>> import numpy as np
    >>> m = WeightedSoup(WeightedSoup.Params(weights=[1, 3]))
    >>> m.merge(None, [np.zeros(1, "f4"), np.ones(1, "f4")])
    array([0.75])
    """

    name = "weighted"
    Params = WeightedParams

    def setup(self, context: MergeContext) -> None:
        count = context.num_ingredients
        for where, weights in [("method.weights", self.params.weights)] + [
            (f"method.per_tensor[{key!r}]", w) for key, w in self.params.per_tensor.items()
        ]:
            if len(weights) != count:
                raise MethodParameterError(
                    f"{where}: got {len(weights)} weights for {count} ingredients; give one per ingredient"
                )
            if self.params.normalize and abs(sum(weights)) < 1e-12:
                raise MethodParameterError(
                    f"{where}: the weights sum to 0, so they cannot be normalised; "
                    "change them or set normalize: false"
                )

    def _weights_for(self, key: str | None) -> list[float]:
        """The raw weights of tensor ``key`` (``per_tensor`` first)."""
        return self.params.per_tensor.get(key, self.params.weights) if key else self.params.weights

    def _divisor(self, weights: Sequence[float]) -> float:
        """The weights' float64 sum when normalising (divided once, at the end), else 1."""
        return float(np.sum(np.asarray(weights, dtype=np.float64))) if self.params.normalize else 1.0

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        return linear_combination(chunks, *self.linear_terms(len(chunks), info.key if info else None))

    def linear_terms(self, count: int, key: str | None = None) -> tuple[list[float], float]:
        weights = list(self._weights_for(key))
        return weights, self._divisor(weights)

    def linear_weights(self, count: int, key: str | None = None) -> list[float]:
        weights = self._weights_for(key)
        divisor = self._divisor(weights)
        return [w / divisor for w in weights]

    def merge_torch(self, info: ChunkInfo, chunks: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """:meth:`merge` on the chunks' device (GPU path): the same float64 operations, same bytes."""
        weights = self._weights_for(info.key if info else None)
        return linear_combination_torch(chunks, weights, self._divisor(weights))

    def report(self) -> dict:
        weights = self._weights_for(None)
        divisor = self._divisor(weights)
        return {"weights": [w / divisor for w in weights]}
