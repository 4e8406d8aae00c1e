"""Uniform soup (Wortsman et al., 2022): the plain mean of the ingredients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .base import ChunkInfo, TensorMethod
from .linear_math import linear_combination, linear_combination_torch

if TYPE_CHECKING:
    import torch


class UniformSoup(TensorMethod):
    """The mean of every tensor over the N ingredients: exact sum in float64, one division.

    The engine rounds the float64 mean once to the output dtype, so a soup of a
    checkpoint with itself is that checkpoint, bit for bit.

    >>> import numpy as np
    >>> UniformSoup(UniformSoup.Params()).merge(None, [np.ones(2, "f4"), np.zeros(2, "f4")])
    array([0.5, 0.5])
    """

    name = "uniform"
    paper = "https://arxiv.org/abs/2203.05482"
    paper_title = ("Model soups: averaging weights of multiple fine-tuned models improves accuracy without "
                   "increasing inference time (Wortsman et al., 2022)")

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        return linear_combination(chunks, *self.linear_terms(len(chunks)))

    def linear_terms(self, count: int, key: str | None = None) -> tuple[list[float], float]:
        return [1.0] * count, float(count)

    def linear_weights(self, count: int, key: str | None = None) -> list[float]:
        return [1.0 / count] * count

    def merge_torch(self, info: ChunkInfo, chunks: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """:meth:`merge` on the chunks' device (GPU path): the same float64 operations, same bytes."""
        return linear_combination_torch(chunks, [1.0] * len(chunks), float(len(chunks)))
