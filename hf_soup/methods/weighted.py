"""Weighted soup: a fixed linear combination of the ingredients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from pydantic import Field, field_validator

from ..errors import MethodParameterError
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod

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
    """``sum_i w_i * x_i`` per tensor, with ``w`` normalised to sum 1 by default.

    >>> import numpy as np
    >>> m = WeightedSoup(WeightedSoup.Params(weights=[1, 3]))
    >>> m.merge(None, [np.zeros(1, "f4"), np.ones(1, "f4")])
    array([0.75], dtype=float32)
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
        weights = self.params.per_tensor.get(key, self.params.weights) if key else self.params.weights
        if self.params.normalize:
            total = sum(weights)
            weights = [w / total for w in weights]
        return weights

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        weights = self._weights_for(info.key if info else None)
        out = np.zeros(chunks[0].shape, dtype=np.float32)
        scratch = np.empty_like(out)
        for weight, chunk in zip(weights, chunks):
            if weight:
                np.multiply(chunk, np.float32(weight), out=scratch)
                out += scratch
        return out

    def linear_weights(self, count: int, key: str | None = None) -> list[float]:
        return self._weights_for(key)

    def merge_torch(self, info: ChunkInfo, chunks: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """:meth:`merge` on the chunks' device (GPU path): same products and sums, same order.

        Products and sums are separate operations (no fused multiply-add), so the bytes
        match the numpy path.
        """
        import torch

        weights = self._weights_for(info.key if info else None)
        out = torch.zeros_like(chunks[0])
        scratch = torch.empty_like(out)
        for weight, chunk in zip(weights, chunks):
            if weight:
                torch.mul(chunk, torch.tensor(weight, dtype=torch.float32, device=out.device), out=scratch)
                out += scratch
        return out

    def report(self) -> dict:
        return {"weights": self._weights_for(None)}
