"""Exact per-tensor statistics over a tensor read in streamed chunks: numpy's float64 sum, and rank selection.

Base-relative methods need statistics of a whole tensor (the l1 norm of a task vector, the
k-th largest magnitude) but should hold only bounded chunks of it. Both statistics here give
the bytes the whole-array numpy computation gives:

* :class:`PairwiseSum` feeds values in order and returns their sum by one fixed pairwise tree
  (halves rounded to multiples of 8; leaves summed by ``np.sum``). It is numpy's own order
  for ``np.sum`` of a contiguous float64 array in the numpy versions tested here (numpy 2.0
  groups arrays of millions of elements differently); the whole-tensor path uses the same
  tree (:func:`pairwise_total`), so the two paths agree on any numpy.
* :class:`RankSelection` finds the element at a rank of ``(value, position)`` order (values
  ascending or descending, ties by position) in a few passes: histograms of the float64 bit
  patterns (a radix select, exact for non-negative values), then the few candidates left.

>>> values = np.array([0.5, 3.0, 0.5, 2.0])
>>> selection = RankSelection(4, rank=2, descending=True)
>>> while not selection.done:
...     selection.begin_pass()
...     selection.observe(0, values)
...     selection.end_pass()
>>> selection.result
(0.5, 0)
"""

from __future__ import annotations

import numpy as np

_UNROLL = 8  # numpy's pairwise sum splits at multiples of its 8-way unrolling
LEAF = 1 << 18  # values per subtree summed at once (bounds the buffer)


def _tree(start: int, count: int, leaf: int) -> tuple:
    """numpy's pairwise tree over ``count`` values, cut at subtrees of at most ``leaf`` values."""
    if count <= leaf:
        return (start, count)
    half = count // 2
    half -= half % _UNROLL
    return (_tree(start, half, leaf), _tree(start + half, count - half, leaf))


def _leaves(node: tuple) -> list[tuple[int, int]]:
    if isinstance(node[0], int):
        return [node]  # type: ignore[list-item]
    return _leaves(node[0]) + _leaves(node[1])


def pairwise_total(values: np.ndarray) -> float:
    """The :class:`PairwiseSum` of a whole float64 array (the order the streamed path uses)."""
    values = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    total = PairwiseSum(values.size)
    total.add(values)
    return total.result()


class PairwiseSum:
    """``np.sum`` of ``count`` float64 values that arrive in order, chunk by chunk (``add``)."""

    def __init__(self, count: int, leaf: int | None = None):
        self.count = count
        self.tree = _tree(0, count, max(leaf or LEAF, 128))
        self.leaves = _leaves(self.tree)
        self.sums: list[float] = []
        self.buffer: np.ndarray | None = None
        self.filled = 0

    def add(self, values: np.ndarray) -> None:
        """Feed the next values (float64, in order)."""
        pos = 0
        while pos < values.size:
            size = self.leaves[len(self.sums)][1]
            take = min(size - self.filled, values.size - pos)
            if self.filled == 0 and take == size:  # a whole subtree inside these values
                self.sums.append(float(np.sum(values[pos : pos + take])))
            else:
                if self.buffer is None:
                    self.buffer = np.empty(max(size for _, size in self.leaves), dtype=np.float64)
                self.buffer[self.filled : self.filled + take] = values[pos : pos + take]
                self.filled += take
                if self.filled == size:
                    self.sums.append(float(np.sum(self.buffer[:size])))
                    self.filled = 0
            pos += take

    def result(self) -> float:
        """The sum, once all ``count`` values were fed."""
        if self.count == 0:
            return 0.0
        assert len(self.sums) == len(self.leaves), "PairwiseSum: fewer values were fed than announced"
        sums = iter(self.sums)

        def join(node: tuple) -> float:
            if isinstance(node[0], int):
                return next(sums)
            return join(node[0]) + join(node[1])

        return join(self.tree)


DIGITS = (18, 16, 16, 13)  # bits of the 63-bit pattern (the sign is 0) resolved per histogram pass
COLLECT = 1 << 19  # candidates gathered (16 bytes each) once a group is this small


class RankSelection:
    """The element at 0-based ``rank`` of ``size`` non-negative float64 values in (value, position) order.

    Values ascend (descend when ``descending``); equal values are ordered by position. Each
    pass calls :meth:`begin_pass`, :meth:`observe` for every chunk in position order and
    :meth:`end_pass`, until :attr:`done`; :attr:`result` is then ``(value, position)``.
    Bit patterns of non-negative floats order like the floats, so the top bits narrow the
    group holding the rank (one histogram per pass), until it is small enough to gather.
    """

    def __init__(self, size: int, rank: int, descending: bool = False, collect: int | None = None):
        assert 0 <= rank < size
        self.rank, self.group, self.descending, self.collect = rank, size, descending, collect or COLLECT
        self.bits, self.prefix, self.level = 0, 0, 0  # the group: patterns whose top ``bits`` of 63 are ``prefix``
        self.mode = "new"
        self.result: tuple[float, int] | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def begin_pass(self) -> None:
        """Start a pass over every chunk (nothing to do once :attr:`done`)."""
        if self.done:
            self.mode = "done"
        elif self.bits == 63:
            self.mode, self.seen = "locate", 0
        elif self.group <= self.collect:
            self.mode, self.keys, self.positions = "collect", [], []
        else:
            self.mode, self.width = "histogram", min(DIGITS[min(self.level, len(DIGITS) - 1)], 63 - self.bits)
            self.counts = np.zeros(1 << self.width, dtype=np.int64)
            self.low, self.high = np.uint64(~np.uint64(0)), np.uint64(0)

    def observe(self, start: int, values: np.ndarray) -> None:
        """The chunk of values (float64, non-negative) starting at flat position ``start``."""
        if self.mode == "done" or self.done:
            return
        keys = values.view(np.uint64)
        inside = None if self.bits == 0 else (keys >> np.uint64(63 - self.bits)) == np.uint64(self.prefix)
        if self.mode == "locate":
            count = keys.size if inside is None else int(np.count_nonzero(inside))
            if self.seen + count > self.rank:
                where = self.rank - self.seen
                position = where if inside is None else int(np.flatnonzero(inside)[where])
                self.result = (_value(self.prefix), start + position)
            self.seen += count
            return
        if inside is not None:
            keys = keys[inside]
        if keys.size == 0:
            return
        if self.mode == "collect":
            self.keys.append(keys.copy() if inside is None else keys)
            where = np.arange(keys.size) if inside is None else np.flatnonzero(inside)
            self.positions.append(where + start)
            return
        digits = keys >> np.uint64(63 - self.bits - self.width)
        if self.bits:
            digits &= np.uint64((1 << self.width) - 1)
        self.counts += np.bincount(digits.view(np.int64), minlength=self.counts.size)
        self.low, self.high = min(self.low, keys.min()), max(self.high, keys.max())

    def end_pass(self) -> None:
        if self.mode == "collect":
            keys, positions = np.concatenate(self.keys), np.concatenate(self.positions)
            self.keys = self.positions = []
            order = np.lexsort((positions, ~keys if self.descending else keys))
            chosen = order[self.rank]
            self.result = (_value(int(keys[chosen])), int(positions[chosen]))
        elif self.mode == "histogram":
            counts, self.counts = self.counts, None  # not kept past the pass
            if self.low == self.high:  # every value of the group is the same: only its position is left
                self.prefix, self.bits = int(self.low), 63
                return
            ordered = counts[::-1] if self.descending else counts
            below = np.cumsum(ordered)
            digit = int(np.searchsorted(below, self.rank, side="right"))
            self.rank -= int(below[digit - 1]) if digit else 0
            self.group = int(ordered[digit])
            if self.descending:
                digit = counts.size - 1 - digit
            self.prefix = (self.prefix << self.width) | digit
            self.bits += self.width
            self.level += 1
        elif self.mode == "locate" and not self.done:
            raise AssertionError("RankSelection: the rank was not reached; fewer values than announced")


class BandSelection:
    """The element at ``rank`` of ``size`` non-negative float64 values in (value, position) order, in one pass.

    A guess (from a sample) says the value at the rank lies in the band from ``first`` to
    ``last`` (in the order: ``first >= last`` when descending). One pass counts the values
    ranked before the band and gathers the band's values with their positions, at most
    ``cap`` of them; if the rank falls in the band, :attr:`result` follows from them. A band
    with more (many equal magnitudes, as bfloat16 weights give) is counted instead, per
    chunk: how many equal either end, how many lie strictly inside. If the rank falls on an
    end, the counts name the chunk that holds its occurrence and :meth:`locate` reads that
    chunk again. Otherwise (a bad guess, or too many strictly inside) :attr:`failed` is set
    and a :class:`RankSelection` must take over.
    """

    def __init__(self, size: int, rank: int, descending: bool, first: float, last: float, cap: int):
        assert 0 <= rank < size
        self.size, self.rank, self.descending, self.first, self.last, self.cap = size, rank, descending, first, last, cap
        self.before = 0  # values ranked before the band
        self.gathered = 0
        self.values: list[np.ndarray] | None = []  # the band's values of each chunk, while gathering
        self.positions: list[np.ndarray] = []
        self.chunks: list[tuple[int, int, int, int]] = []  # (start, stop, equal to first, equal to last)
        self.counts = [0, 0, 0]  # equal to first, strictly inside, equal to last (once counting)
        self.result: tuple[float, int] | None = None
        self.failed = False
        self.pending_chunk: tuple[int, int, int] | None = None  # (start, stop, occurrence of the value sought)
        self._sought = 0.0

    @property
    def done(self) -> bool:
        return self.result is not None

    def begin_pass(self) -> None:
        pass

    def observe(self, start: int, values: np.ndarray, scratch: np.ndarray | None = None,
                inside: np.ndarray | None = None) -> None:
        """The chunk of values (float64, non-negative) starting at flat position ``start`` (chunks in order)."""
        if self.done or self.failed or self.pending_chunk is not None:
            return
        before = (np.greater if self.descending else np.less)(values, self.first, out=scratch)
        count_before = int(np.count_nonzero(before))
        reached = (np.greater_equal if self.descending else np.less_equal)(values, self.last, out=inside)
        band = int(np.count_nonzero(reached)) - count_before
        self.before += count_before
        if self.values is not None and self.gathered + band <= self.cap:
            np.logical_xor(reached, before, out=reached)  # the band: reached, not before
            where = np.flatnonzero(reached) if band else np.empty(0, dtype=np.intp)
            self.values.append(values[where])
            where += start
            self.positions.append(where.astype(np.int32) if self.size <= np.iinfo(np.int32).max else where)
            self.chunks.append((start, start + values.size, 0, 0))
            self.gathered += band
            return
        if self.values is not None:
            self._count_gathered()
        first = int(np.count_nonzero(np.equal(values, self.first, out=before))) if band else 0
        last = int(np.count_nonzero(np.equal(values, self.last, out=before))) if band and self.first != self.last else 0
        self.chunks.append((start, start + values.size, first, last))
        self._add_counts(first, band - first - last, last)

    def _add_counts(self, first: int, between: int, last: int) -> None:
        self.counts = [self.counts[0] + first, self.counts[1] + between, self.counts[2] + last]

    def _count_gathered(self) -> None:
        """Too many in the band: from gathering to counting (the chunks gathered so far counted from their values)."""
        chunks = []
        for (start, stop, _, _), values in zip(self.chunks, self.values):  # type: ignore[arg-type]
            first = int(np.count_nonzero(values == self.first))
            last = int(np.count_nonzero(values == self.last)) if self.first != self.last else 0
            chunks.append((start, stop, first, last))
            self._add_counts(first, values.size - first - last, last)
        self.chunks, self.values, self.positions = chunks, None, []

    def end_pass(self) -> None:
        """The result, a chunk to :meth:`locate` in, or :attr:`failed`."""
        if self.done or self.failed or self.pending_chunk is not None:
            return
        index = self.rank - self.before  # the rank's place within the band
        if self.values is not None:
            if 0 <= index < self.gathered:
                values, positions = np.concatenate(self.values), np.concatenate(self.positions)  # in position order
                at = values.size - 1 - index if self.descending else index
                value = np.partition(values, at)[at]
                ahead = int(np.count_nonzero(values > value if self.descending else values < value))
                self.result = (float(value), int(positions[values == value][index - ahead]))
            else:
                self.failed = True
        else:
            first, between, last = self.counts
            if 0 <= index < first:
                self._find(self.first, index, 2)
            elif first + between <= index < first + between + last:
                self._find(self.last, index - first - between, 3)
            else:
                self.failed = True
        self.values, self.positions, self.chunks = None, [], []

    def _find(self, value: float, occurrence: int, column: int) -> None:
        for chunk in self.chunks:
            if occurrence < chunk[column]:
                self._sought, self.pending_chunk = value, (chunk[0], chunk[1], occurrence)
                return
            occurrence -= chunk[column]
        raise AssertionError("BandSelection: fewer equal values than counted")

    def locate(self, values: np.ndarray) -> None:
        """The values of :attr:`pending_chunk` read again: the position of the occurrence sought."""
        start, _, occurrence = self.pending_chunk  # type: ignore[misc]
        self.result = (self._sought, start + int(np.flatnonzero(values == self._sought)[occurrence]))
        self.pending_chunk = None


def _value(key: int) -> float:
    return float(np.array([key], dtype=np.uint64).view(np.float64)[0])


def first_ranked(values: np.ndarray, start: int, bound: tuple[float, int], descending: bool,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Which of a chunk's ``values`` (flat positions from ``start``) come at or before ``bound`` in the order."""
    value, position = bound
    keep = (np.greater if descending else np.less)(values, value, out=out)
    last = position - start  # equal values count up to the bound's own position
    if last >= 0:
        head = values[: last + 1]
        keep[: last + 1] |= head == value
    return keep


__all__ = ["BandSelection", "PairwiseSum", "RankSelection", "first_ranked", "pairwise_total"]
