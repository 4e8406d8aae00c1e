"""Work items (one range of one tensor) and the reads that fill them, into per-thread reused buffers.

A merge is a list of :class:`WorkItem`: flat elements ``[start, stop)`` of one aligned
tensor. Items are independent (methods are elementwise, or see whole rows or a whole tensor in one item),
so worker threads take them in any order. Each thread reads its item's N ranges with
``os.preadv`` into buffers it keeps and reuses, so memory is O(threads x N x chunk),
whatever the model size.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..align import AlignedTensor
from ..io import dtypes
from ..io.source import TensorSource

DEFAULT_BUFFER_BYTES = 512 * 1024 * 1024
MIN_CHUNK = 1 << 16
MAX_CHUNK = 1 << 20
#: Input elements one item reads in all (N ingredients x item size): a thread's buffers, and so
#: the peak memory, stay the same whatever the number of ingredients.
ITEM_INPUTS = 4 * MAX_CHUNK


@dataclass(frozen=True)
class WorkItem:
    """Flat elements ``[start, stop)`` of ``tensor``."""

    tensor: AlignedTensor
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def bytes_per_element(num_inputs: int) -> int:
    """Working bytes per element of an item: N raw + N float32 inputs, float64 result and scratch."""
    return num_inputs * (8 + 4) + 3 * 8


def chunk_elements(num_inputs: int, threads: int = 1, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> int:
    """Elements per item: at most ``ITEM_INPUTS / N``, and the items of all threads within ``buffer_bytes``.

    >>> chunk_elements(4), chunk_elements(8), chunk_elements(2)
    (1048576, 524288, 1048576)
    """
    most = min(MAX_CHUNK, ITEM_INPUTS // max(1, num_inputs))
    return int(min(most, max(MIN_CHUNK, buffer_bytes // (max(1, threads) * bytes_per_element(num_inputs)))))


def aligned(step: int, multiple: int) -> int:
    """``step`` cut down to a whole number of ``multiple`` (at least one).

    >>> aligned(1000, 300), aligned(100, 300), aligned(100, 1)
    (900, 300, 100)
    """
    multiple = max(1, multiple)
    return max(multiple, step - step % multiple)


def work_items(tensors: Sequence[AlignedTensor], step: int, whole_tensors: bool = False,
               row_length: Callable[[tuple[int, ...]], int] | None = None) -> Iterator[WorkItem]:
    """Every tensor cut into ranges of ``step`` elements (whole tensors for merges when asked), in order.

    ``row_length(shape)``: merged tensors are cut at multiples of it (whole rows; one row when
    a row is longer than ``step``).
    """
    for tensor in tensors:
        numel = tensor.meta.numel
        size = max(numel, 1) if whole_tensors and tensor.action == "merge" else step
        if row_length is not None and tensor.action == "merge" and not whole_tensors:
            size = aligned(step, row_length(tensor.shape))
        if numel == 0:
            yield WorkItem(tensor, 0, 0)
        for start in range(0, numel, size):
            yield WorkItem(tensor, start, min(numel, start + size))


class ReadBuffers(threading.local):
    """Per-thread reusable arrays, grown on demand: ``get(name, dtype, count)``.

    The views handed out are remembered, so the engine's per-block calls cost a dict lookup.
    """

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.views: dict[tuple, np.ndarray] = {}

    def get(self, name: str, dtype: np.dtype, count: int) -> np.ndarray:
        view = self.views.get((name, dtype, count))
        if view is not None:
            return view
        array_dtype = np.dtype(dtype)
        nbytes = count * array_dtype.itemsize
        array = self.arrays.get(name)
        if array is None or array.size < nbytes:
            array = np.empty(max(nbytes, 1), dtype=np.uint8)
            self.arrays[name] = array
            self.views = {key: value for key, value in self.views.items() if key[0] != name}
        view = array[:nbytes].view(array_dtype)
        if len(self.views) < 4096:  # a run has a few shapes; never grow without bound
            self.views[(name, dtype, count)] = view
        return view


def input_dtype(storage: str) -> np.dtype:
    """The array dtype a method receives for stored ``storage``: float64 for F64, else float32 (exact)."""
    return np.dtype(np.float64) if storage == "F64" else np.dtype(np.float32)


def read_raw(item: WorkItem, sources: Sequence[TensorSource], indices: Sequence[int],
             buffers: ReadBuffers) -> list[tuple[np.ndarray, str]]:
    """The item's range of every selected ingredient in its storage dtype: ``(array, dtype name)`` pairs."""
    raws = []
    for n, (source, index) in enumerate(zip(sources, indices)):
        key = item.tensor.sources[index]
        storage = source.exact_dtype(key)
        raw = buffers.get(f"raw{n}", dtypes.STORAGE[storage], item.count)
        if storage == "F32" and source.meta(key).dtype != "F32":  # computed in float32 by the source
            raws.append((source.read_float32(key, item.start, item.stop, raw), storage))
        else:
            raws.append((source.read(key, item.start, item.stop, raw), storage))
    return raws


def widen(raws: Sequence[tuple[np.ndarray, str]], start: int, stop: int, buffers: ReadBuffers) -> list[np.ndarray]:
    """Elements ``[start, stop)`` of each raw array as exact float32 (float64 for F64) arrays."""
    arrays = []
    for n, (raw, storage) in enumerate(raws):
        if storage in ("F32", "F64"):
            arrays.append(raw[start:stop])
        else:
            target = buffers.get(f"in{n}", input_dtype(storage), stop - start)
            arrays.append(dtypes.to_float32(raw[start:stop], storage, target))
    return arrays


def read_inputs(item: WorkItem, sources: Sequence[TensorSource], indices: Sequence[int],
                buffers: ReadBuffers) -> list[np.ndarray]:
    """The item's range of every selected ingredient, as exact float32 (float64 for F64) arrays."""
    return widen(read_raw(item, sources, indices, buffers), 0, item.count, buffers)


def read_copy(item: WorkItem, source: TensorSource, buffers: ReadBuffers) -> np.ndarray:
    """The item's range of a ``copy`` tensor, in the output storage dtype."""
    tensor = item.tensor
    key = tensor.sources[tensor.copy_from]
    stored = source.meta(key).dtype
    if stored == tensor.dtype:
        return source.read(key, item.start, item.stop, buffers.get("copy", dtypes.STORAGE[stored], item.count))
    values = buffers.get("copy32", np.float32, item.count)
    source.read_float32(key, item.start, item.stop, values)
    return dtypes.from_float32(values, tensor.dtype)


__all__ = ["DEFAULT_BUFFER_BYTES", "ReadBuffers", "WorkItem", "aligned", "chunk_elements", "read_copy", "read_inputs",
           "read_raw", "widen", "work_items"]
