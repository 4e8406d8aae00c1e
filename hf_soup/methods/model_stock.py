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
    The norms and dot products come from a pre-pass over blocks of the tensor (fixed by its
    shape, so the sums do not depend on chunking); the merge is then elementwise.
    """

    name = "model_stock"
    paper = "https://arxiv.org/abs/2403.19522"
    paper_title = "Model Stock: All we need is just a few fine-tuned models (Jang et al., ECCV 2024)"
    Params = ModelStockParams
    needs_prepass = True
    prepass_threads = 2  # each thread holds N + 1 float32 inputs and N float64 offsets of up to 1 Mi elements (~40 MB)
    uses_base = "required"

    def setup(self, context: MergeContext) -> None:
        self._ratios: dict[str, np.ndarray] = {}
        if context.num_ingredients < 2:
            raise MethodParameterError(
                f"model_stock needs at least 2 fine-tuned ingredients besides the base; got {context.num_ingredients}")

    def _columns(self, shape: tuple[int, ...], size: int) -> int:
        return shape[-1] if self.params.filter_wise and len(shape) >= 2 else size

    def prepare_tensor(self, info: ChunkInfo, read) -> None:
        """The ratio t of each row (of the whole tensor unless ``filter_wise``), from the offsets' sums."""
        size = info.stop
        if size == 0:
            return
        columns = self._columns(info.shape, size)
        height = size // columns
        sums = None
        for rows, cols in _blocks((height, columns)):  # the blocks _ratio sums over, read one at a time
            top, bottom = rows.start, min(rows.stop, height)
            if cols == slice(None):
                start, stop, shape = top * columns, bottom * columns, (bottom - top, columns)
            else:
                left, right = cols.start, min(cols.stop, columns)
                start, stop, shape = top * columns + left, top * columns + right, (1, right - left)
            chunks = read(start, stop)
            base, inputs = chunks[0].reshape(shape), [c.reshape(shape) for c in chunks[1:]]
            if sums is None:
                sums = _OffsetSums(len(inputs), height)
            sums.add(slice(top, bottom), base, inputs)
        assert sums is not None
        self._ratios[info.key] = sums.ratio()

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """t · mean_k θ_k + (1 − t) · θ_base over the chunk, with each element's row's t."""
        if chunks[0].size == 0:
            return np.empty(0, dtype=np.float64)
        ratios = self._ratios.get(info.key)
        if ratios is None:
            raise AssertionError(f"model_stock: tensor {info.key} was merged before its pre-pass "
                                 "(hf_soup.engine.prepass.prepass)")
        columns = self._columns(info.shape, _numel(info.shape))
        base, inputs = chunks[0], chunks[1:]
        if ratios.size == 1:
            t = ratios.reshape(-1)
        else:
            t = ratios.reshape(-1)[np.arange(info.start, info.stop) // columns]
        out = np.empty(base.size, dtype=np.float64)
        scratch = np.empty(min(base.size, _MERGE_BLOCK), dtype=np.float64)
        for start in range(0, base.size, _MERGE_BLOCK):
            part = slice(start, start + _MERGE_BLOCK)
            average, wide = out[part], scratch[: min(_MERGE_BLOCK, base.size - start)]
            part_t = t if t.size == 1 else t[part]
            np.copyto(average, inputs[0][part])
            for x in inputs[1:]:  # widened first: float64 += float32 in place is several times slower
                np.copyto(wide, x[part])
                average += wide
            average /= len(inputs)
            average *= part_t
            np.multiply(1 - part_t, base[part], out=wide)
            average += wide
        return out

    def merge_whole(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """The same soup from the whole tensor at once (the reference the streamed merge equals)."""
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
        sums = _OffsetSums(len(inputs), base.shape[0])
        for rows, cols in _blocks(base.shape):  # norms and dot products summed block by block
            sums.add(rows, base[rows, cols], [x[rows, cols] for x in inputs])
        return sums.ratio()

    def report(self) -> dict[str, Any]:
        return {"base_relative": True}


_BLOCK = 1 << 20  # elements per block of the norms and dot products (fixes their float64 sums)
_MERGE_BLOCK = 1 << 16  # the elementwise merge: any block gives the same bytes; this one stays in the core's cache


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


class _OffsetSums:
    """Per row, the squared norms and pairwise dot products of the offsets ``θ_k − θ_base``, block by block."""

    def __init__(self, count: int, height: int):
        self.count = count
        self.pairs = list(combinations(range(count), 2))
        self.squares = np.zeros((count, height))
        self.dots = np.zeros((len(self.pairs), height))
        self._scratch: np.ndarray | None = None  # the offsets of one block, in float64

    def add(self, rows: slice, base: np.ndarray, inputs: Sequence[np.ndarray]) -> None:
        """One block: rows ``rows`` (2-D arrays of those rows, all or some columns)."""
        if self._scratch is None or self._scratch.shape[1] < base.size:  # kept for the tensor's next blocks
            self._scratch = np.empty((self.count, base.size), dtype=np.float64)
        # x − base in float64, computed in float64 into kept arrays (float64 −= float32 in place is slower)
        offsets = [np.subtract(x, base, out=self._scratch[k, : base.size].reshape(base.shape), dtype=np.float64)
                   for k, x in enumerate(inputs)]
        for i, offset in enumerate(offsets):
            self.squares[i, rows] += np.einsum("ij,ij->i", offset, offset)
        for n, (i, j) in enumerate(self.pairs):
            self.dots[n, rows] += np.einsum("ij,ij->i", offsets[i], offsets[j])

    def ratio(self) -> np.ndarray:
        """t per row, shape (rows, 1)."""
        count, pairs = self.count, self.pairs
        norms = np.sqrt(self.squares)
        cosines = [np.clip(self.dots[n] / np.maximum(norms[i] * norms[j], 1e-6), -1, 1)
                   for n, (i, j) in enumerate(pairs)]
        cos = (sum(cosines[1:], cosines[0]) / len(cosines))[:, None]
        denominator = 1 + (count - 1) * cos
        singular = np.abs(denominator) < 1e-6
        return np.where(singular, 0.0, count * cos / np.where(singular, 1.0, denominator))


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
