"""Per-ingredient validation logits, computed once, for RADIN's ranking and the logit ensemble.

Each ingredient costs one pass over the split. Rows are the scored rows (examples, or
scored token positions for causal LMs). Logits are kept in memory when all of them fit
in ``memory_limit`` bytes, else memory-mapped from files in ``spec.cache_dir`` (or a
temporary folder removed on :meth:`LogitCache.close`); ``spec.logits_dtype: float16``
halves the size. Each ingredient's own score is computed from its float32 logits before
any down-cast, so it is exact.

>>> cache = evaluator.logit_cache()                      # doctest: +SKIP
>>> cache.score([0, 2, 3])                               # metric of the averaged logits (RADIN eq. 3)  # doctest: +SKIP
>>> cache.score(range(cache.num_ingredients))            # the logit ensemble  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .metrics import Metric, Totals, row_statistics
from .shared_logits import build_shared, can_share

DEFAULT_MEMORY_LIMIT = 1 << 30
_ROWS_PER_CHUNK = 4096


class LogitCache:
    """``arrays[i]``: ingredient i's logits ``(M, C)``; ``labels``: ``(M,)``; ``scores[i]``: its metric."""

    def __init__(self, arrays: list[np.ndarray], labels: np.ndarray, metric: Metric, scores: dict[int, float],
                 directory: Path | None = None, cleanup: bool = False, indices: Sequence[int] | None = None):
        self.arrays = arrays
        self.indices = list(range(len(arrays))) if indices is None else list(indices)
        self.labels = labels
        self.metric = metric
        self.scores = scores
        self.directory = directory
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(directory), True) if cleanup and directory else None

    @property
    def num_ingredients(self) -> int:
        return len(self.arrays)

    @property
    def num_rows(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @property
    def on_disk(self) -> bool:
        return any(isinstance(a, np.memmap) for a in self.arrays)

    @classmethod
    def build(cls, evaluator: Any, indices: Sequence[int] | None = None,
              memory_limit: int = DEFAULT_MEMORY_LIMIT) -> "LogitCache":
        """Run one logit pass per ingredient of ``evaluator`` (bound) and cache the rows."""
        builder = evaluator.require_builder()
        indices = list(range(builder.num_ingredients)) if indices is None else list(indices)
        spec = evaluator.spec
        dtype = np.dtype(spec.logits_dtype)
        cleanup = spec.cache_dir is None
        if cleanup:
            directory = Path(tempfile.mkdtemp(prefix="hf-soup-logits-"))
        else:
            directory = Path(spec.cache_dir).expanduser()
            directory.mkdir(parents=True, exist_ok=True)
        arrays: list[np.ndarray] = []
        scores: dict[int, float] = {}
        labels: np.ndarray | None = None

        def run_pass(index: int) -> _RowWriter:
            writer = _RowWriter(directory / f"ingredient-{index}.logits", dtype, evaluator.metric)
            evaluator.load_ingredient(index)
            evaluator.logits(None, on_rows=writer, description=f"logits of ingredient {index}")
            writer.close()
            return writer

        try:
            if can_share(evaluator) and indices:  # several processes: each pass runs once, on one of them
                parts, scores, labels = build_shared(
                    evaluator, indices, run_pass,
                    lambda index, rows, classes: _RowSink(directory / f"ingredient-{index}.logits", dtype, classes))
                arrays = [parts[i].open(keep_in_memory=parts[i].nbytes * len(indices) <= memory_limit) for i in indices]
            else:
                for index in indices:
                    writer = run_pass(index)
                    scores[index] = writer.score()
                    if labels is None:
                        labels = writer.labels()
                    arrays.append(writer.open(keep_in_memory=writer.nbytes * len(indices) <= memory_limit))
        except BaseException:
            if cleanup:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        assert labels is not None
        return cls(arrays, labels, evaluator.metric, scores, directory, cleanup, indices)

    def mean_logits(self, indices: Sequence[int], weights: Sequence[float] | None = None,
                    rows: slice = slice(None)) -> np.ndarray:
        """``sum_k p_k * logits_k`` over ``indices`` for ``rows`` (uniform ``p`` unless ``weights``), float32."""
        indices = list(indices)
        if weights is None:
            weights = [1.0 / len(indices)] * len(indices)
        out: np.ndarray | None = None
        for index, weight in zip(indices, weights):
            part = np.asarray(self.arrays[self._position(index)][rows], dtype=np.float32)
            if out is None:
                out = part * np.float32(weight)
            else:
                out += part * np.float32(weight)
        assert out is not None
        return out

    def _position(self, index: int) -> int:
        return self.indices.index(index)

    def score(self, indices: Sequence[int], weights: Sequence[float] | None = None) -> float:
        """The metric of the averaged logits of ``indices`` (RADIN's eq. 3 approximation)."""
        indices = list(indices)
        if self.metric.needs_all_rows:
            return self.metric.score(self.mean_logits(indices, weights), self.labels)
        totals = Totals()
        for start in range(0, self.num_rows, _ROWS_PER_CHUNK):
            rows = slice(start, min(self.num_rows, start + _ROWS_PER_CHUNK))
            correct, nll = row_statistics(self.mean_logits(indices, weights, rows), self.labels[rows])
            totals.add(correct.sum().item(), nll.sum().item(), len(correct))
        return self.metric.from_totals(totals)

    def close(self) -> None:
        """Drop the arrays and remove a temporary cache folder."""
        self.arrays = []
        if self._finalizer is not None:
            self._finalizer()


class _RowWriter:
    """Receives an ingredient's scored rows batch by batch: exact totals + a file of rows."""

    def __init__(self, path: Path, dtype: np.dtype, metric: Metric):
        self.path = path
        self.dtype = dtype
        self.metric = metric
        self.totals = Totals()
        self._file = open(path, "wb")
        self._labels: list[np.ndarray] = []
        self._all_rows: list[np.ndarray] = []
        self.num_classes: int | None = None
        self.nbytes = 0

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.num_classes = logits.shape[-1]
        if self.metric.needs_all_rows:
            self._all_rows.append(np.array(logits, dtype=np.float32))
        else:
            correct, nll = row_statistics(logits, labels)
            self.totals.add(correct.sum().item(), nll.sum().item(), len(labels))
        data = np.ascontiguousarray(logits, dtype=self.dtype)
        self._file.write(data.tobytes())
        self.nbytes += data.nbytes
        self._labels.append(np.asarray(labels, dtype=np.int64))

    def close(self) -> None:
        self._file.close()

    def labels(self) -> np.ndarray:
        return np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)

    def score(self) -> float:
        if self.metric.needs_all_rows:
            score = self.metric.score(np.concatenate(self._all_rows), self.labels())
            self._all_rows = []
            return score
        return self.metric.from_totals(self.totals)

    @property
    def rows(self) -> int:
        return self.nbytes // (self.dtype.itemsize * (self.num_classes or 1))

    def read(self) -> np.ndarray:
        """The rows written (a read-only view of the closed file)."""
        return _open_rows(self, keep_in_memory=False, unlink=False)

    def open(self, keep_in_memory: bool) -> np.ndarray:
        return _open_rows(self, keep_in_memory)


class _RowSink:
    """Receives another process's rows of one ingredient (raw bytes) into a file, like :class:`_RowWriter`."""

    def __init__(self, path: Path, dtype: np.dtype, num_classes: int):
        self.path, self.dtype, self.num_classes = path, dtype, num_classes
        self._file = open(path, "wb")
        self.nbytes = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.nbytes += len(data)

    def close(self) -> None:
        self._file.close()

    def open(self, keep_in_memory: bool) -> np.ndarray:
        return _open_rows(self, keep_in_memory)


def _open_rows(rows: Any, keep_in_memory: bool, unlink: bool = True) -> np.ndarray:
    """The ``(rows, classes)`` array of a closed writer's or sink's file: read into memory (and the file
    removed), or memory-mapped."""
    count = rows.nbytes // (rows.dtype.itemsize * (rows.num_classes or 1))
    shape = (count, rows.num_classes or 0)
    if keep_in_memory or count == 0:
        array = np.fromfile(rows.path, dtype=rows.dtype).reshape(shape)
        if unlink:
            rows.path.unlink()
        return array
    return np.memmap(rows.path, dtype=rows.dtype, mode="r", shape=shape)
