"""The cosine between two tensors' vectors (the whole tensor, its rows or its columns), from streamed blocks.

NuSLERP needs, per vector, the cosine between two versions: norms and a dot product over
every element of the vector. :func:`cosines` sums them over blocks fixed by the tensor's
shape, never by how the tensor is read, so the result does not depend on chunking or threads:

* rows of at most ``BLOCK`` elements: a block holds whole rows (two or more, when there are) and
  each row's cosine is the whole-matrix formula (unit rows, then their dot product): one pass;
* longer rows (a large flattened tensor): column ranges of one row; the squares are summed
  per block in a first pass, the unit vectors' dot products in a second;
* columns: blocks of whole rows (column ranges of one row when a row is longer than
  ``BLOCK``), in the same two passes; each block's rows continue the running per-column sums
  (the running sums enter as the block's first row), so a matrix's column sums follow the
  order numpy's whole-matrix reduction and ``einsum`` take.

>>> layout = Layout.of((2, 3), flatten=False, row_wise=False)
>>> v = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
>>> cosines(layout, lambda start, stop: (v.reshape(-1)[start:stop], v[::-1].reshape(-1)[start:stop])).tolist()
[0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

BLOCK = 1 << 20  # elements per block (bounds the float64 scratch)
_TINY = 1e-7  # norms below this are taken as this (as MergeKit's clamp)

Reader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Layout:
    """A tensor as a C-order ``(height, width)`` matrix whose vectors are its rows, or its ``columns``."""

    height: int
    width: int
    columns: bool = False

    @classmethod
    def of(cls, shape: tuple[int, ...], flatten: bool, row_wise: bool) -> "Layout":
        """The whole tensor (``flatten``), its last-axis rows, or (``row_wise``) its first-axis columns."""
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if flatten or len(shape) < 2:
            return cls(1, size)
        if row_wise:
            return cls(shape[0], size // max(shape[0], 1), columns=True)
        return cls(size // max(shape[-1], 1), shape[-1])

    @property
    def count(self) -> int:
        """How many vectors."""
        return self.width if self.columns else self.height

    def spread(self, start: int, stop: int) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...]]:
        """How per-vector values reach the flat elements ``[start, stop)``: ``(pick, shape)``.

        ``pick(values)`` (one value per vector) broadcasts against the elements reshaped to ``shape``:
        whole rows are a ``(rows, width)`` matrix; other ranges look up each element's vector.
        """
        count, width = stop - start, self.width
        if self.count == 1:
            return (lambda values: values[:1]), (count,)
        if start % width == 0 and count % width == 0:
            if self.columns:
                return (lambda values: values[None, :]), (count // width, width)
            rows = slice(start // width, stop // width)
            return (lambda values: values[rows, None]), (count // width, width)
        positions = np.arange(start, stop, dtype=np.int64)
        vectors = positions % width if self.columns else positions // width
        return (lambda values: values[vectors]), (count,)


def _blocks(layout: Layout) -> Iterator[tuple[int, int, int, int]]:
    """``(top, bottom, left, right)`` blocks of about ``BLOCK`` elements (at most 2x): whole rows, or a range of one."""
    height, width = layout.height, layout.width
    if width <= BLOCK:
        # never one row of several: numpy's einsum sums one long row (> 8 Ki) in another order than each row of a matrix
        step = max(2 if height > 1 else 1, BLOCK // max(width, 1))
        tops = list(range(0, height, step))
        if len(tops) > 1 and height - tops[-1] == 1:
            tops.pop()  # the last row joins the block before it
        for top, bottom in zip(tops, tops[1:] + [height]):
            yield top, bottom, 0, width
    else:
        for row in range(height):
            for left in range(0, width, BLOCK):
                yield row, row + 1, left, min(width, left + BLOCK)


def row_cosines(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """The cosine of each row pair of two float64 matrices: the dot product of the unit rows."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _TINY)

    return np.einsum("ij,ij->i", unit(v0), unit(v1))


def cosines(layout: Layout, read: Reader) -> np.ndarray:
    """One cosine per vector of the two tensors ``read(start, stop)`` gives (float64 flat elements)."""
    blocks = list(_blocks(layout))
    width = layout.width

    def block(top: int, bottom: int, left: int, right: int) -> tuple[np.ndarray, np.ndarray]:
        v0, v1 = read(top * width + left, (bottom - 1) * width + right)
        return v0.reshape(bottom - top, right - left), v1.reshape(bottom - top, right - left)

    if not layout.columns and width <= BLOCK:  # whole rows: the whole-row formula, one pass
        result = np.empty(layout.height, dtype=np.float64)
        for top, bottom, left, right in blocks:
            result[top:bottom] = row_cosines(*block(top, bottom, left, right))
        return result
    squares = np.zeros((2, layout.count), dtype=np.float64)
    last = None
    for top, bottom, left, right in blocks:  # pass 1: the squared norms
        last = block(top, bottom, left, right)
        for n, v in enumerate(last):
            if layout.columns:
                squares[n, left:right] = _column_sums(squares[n, left:right], v * v)
            else:
                squares[n, top] += np.add.reduce(v * v, axis=1)[0]
    norms = np.maximum(np.sqrt(squares), _TINY)
    dots = np.zeros(layout.count, dtype=np.float64)
    for top, bottom, left, right in blocks:  # pass 2: the unit vectors' dot products
        v0, v1 = last if len(blocks) == 1 else block(top, bottom, left, right)
        if layout.columns:
            dots[left:right] = _column_dots(dots[left:right], v0 / norms[0, left:right], v1 / norms[1, left:right])
        else:
            dots[top] += np.einsum("ij,ij->i", v0 / norms[0, top], v1 / norms[1, top])[0]
    return dots


def _column_sums(running: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``running`` plus each column of ``values``, row after row (numpy's order down a column of the whole matrix)."""
    return np.add.reduce(np.concatenate([running[None, :], values]), axis=0)


def _column_dots(running: np.ndarray, u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    """``running`` plus each column's dot product, row after row (as ``einsum`` goes down a whole matrix)."""
    ones = np.ones((1, running.size), dtype=np.float64)
    return np.einsum("ij,ij->j", np.concatenate([running[None, :], u0]), np.concatenate([ones, u1]))


__all__ = ["BLOCK", "Layout", "cosines", "row_cosines"]
