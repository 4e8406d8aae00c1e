"""Uniform soup (Wortsman et al., 2022): the plain mean of the ingredients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .base import ChunkInfo, TensorMethod

if TYPE_CHECKING:
    import torch


class UniformSoup(TensorMethod):
    """Average every tensor over the N ingredients, in float32.

    >>> import numpy as np
    >>> UniformSoup(UniformSoup.Params()).merge(None, [np.ones(2, "f4"), np.zeros(2, "f4")])
    array([0.5, 0.5], dtype=float32)
    """

    name = "uniform"
    paper = "https://arxiv.org/abs/2203.05482"
    paper_title = ("Model soups: averaging weights of multiple fine-tuned models improves accuracy without "
                   "increasing inference time (Wortsman et al., 2022)")

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        out = np.array(chunks[0], dtype=np.float32, copy=True)
        for chunk in chunks[1:]:
            out += chunk
        out /= np.float32(len(chunks))
        return out

    def linear_weights(self, count: int, key: str | None = None) -> list[float]:
        return [1.0 / count] * count

    def merge_torch(self, info: ChunkInfo, chunks: Sequence["torch.Tensor"]) -> "torch.Tensor":
        """The same sums and division as :meth:`merge`, on the chunks' device (GPU path).

        The divisor is a device tensor, not a Python number: CUDA divides by a host
        scalar as a multiplication by its reciprocal, which can differ in the last bit.
        """
        import torch

        out = chunks[0].clone()
        for chunk in chunks[1:]:
            out += chunk
        out /= torch.tensor(len(chunks), dtype=torch.float32, device=out.device)
        return out
