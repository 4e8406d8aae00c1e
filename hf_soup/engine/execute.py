"""Execute a merge: work items on a pool of threads, each read, merged, rounded once and written in place.

Every output tensor's place in its file is known before any work (the header is written
first), so a worker writes its item's bytes at their final offset and items finish in any
order: reads, math and writes of different items overlap on every core. numpy and torch
release the interpreter lock in their kernels; items are large (about a million elements)
so that the threads seldom wait for it. The bytes do not depend on the thread count or the chunk
size: methods are elementwise (or see whole rows, or a whole tensor, in one item) and each element is
rounded once.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

from ..align import AlignedTensor
from ..io.source import TensorSource
from ..methods.base import ChunkInfo, TensorMethod
from ..io import dtypes
from . import finite
from .chunks import (DEFAULT_BUFFER_BYTES, ReadBuffers, WorkItem, aligned, bytes_per_element,
                     chunk_elements, read_copy, read_raw, widen, work_items)
from .linear_block import combine_block
from .rounding import round_to_storage
from .sinks import Sink


def default_threads() -> int:
    """The cores this process may use, shared among the processes of this node (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


BLOCK = 1 << 18


class _CpuRunner:
    """Runs one item on the host: read the N ranges, merge with numpy, round once, write.

    The math runs over blocks of the item (``BLOCK`` elements, 256 Ki; whole items for
    :attr:`~hf_soup.methods.base.TensorMethod.whole_tensor` methods, whole rows for those with a
    ``row_length``): small enough that the numpy passes over a block stay in the core's cache
    (memory bandwidth is what many threads share), large enough that each call works long
    without the interpreter lock.
    """

    def __init__(self, method: TensorMethod, sources: dict[int, TensorSource], indices: Sequence[int],
                 guard: finite.FiniteGuard | None = None):
        self.method = method
        self.guard = guard
        self.sources = sources
        self.indices = list(indices)
        self.selected = [sources[i] for i in self.indices]
        self.buffers = ReadBuffers()

    def run(self, item: WorkItem, sink: Sink) -> None:
        tensor = item.tensor
        if tensor.action == "copy":
            sink.put(tensor, item.start, read_copy(item, self.sources[tensor.copy_from], self.buffers))
            return
        raws = read_raw(item, self.selected, self.indices, self.buffers)
        block = item.count if self.method.whole_tensor else aligned(BLOCK, self.method.row_length(tensor.shape))
        out = self.buffers.get("out", dtypes.STORAGE[tensor.dtype], item.count)
        terms = self.method.linear_terms(len(self.indices), tensor.key)
        for start in range(0, max(item.count, 1), block):
            stop = min(item.count, start + block)
            if terms is None:
                values, clean = self._merge_block(item, raws, start, stop), False
            else:
                values, clean = self._linear_block(item, raws, start, stop, *terms)
            round_to_storage(values, tensor.dtype, out=out[start:stop], scratch=self.buffers.get, finite=clean)
        sink.put(tensor, item.start, out)

    def _merge_block(self, item: WorkItem, raws, start: int, stop: int) -> np.ndarray:
        """The method's :meth:`~hf_soup.methods.base.TensorMethod.merge` of one block (inputs widened first)."""
        chunks = widen(raws, start, stop, self.buffers)
        info = ChunkInfo(item.tensor.key, item.tensor.shape, item.start + start, item.start + stop)
        values = np.asarray(self.method.merge(info, chunks))
        if self.guard is not None:  # NaN / Inf in the inputs, overflow of the output dtype
            self.guard.observe(item.tensor.key, chunks, self.indices, values, item.tensor.dtype)
        return values

    def _linear_block(self, item: WorkItem, raws, start: int, stop: int, weights: Sequence[float],
                      divisor: float) -> tuple[np.ndarray, bool]:
        """A linear soup of one block, summed from the stored inputs; ``(values, known finite)``.

        A finite result in range proves every weighted input finite; only a result out of
        range, or inputs left out by a zero weight, need the guard's per-input count.
        """
        values = combine_block(raws, start, stop, weights, divisor, self.buffers)
        clean = finite.within_range(values, item.tensor.dtype)
        if self.guard is not None and (not clean or not all(weights)):
            chunks = widen(raws, start, stop, self.buffers)
            self.guard.observe(item.tensor.key, chunks, self.indices, values, item.tensor.dtype)
        return values, clean


def execute(
    method: TensorMethod,
    tensors: Sequence[AlignedTensor],
    sources: dict[int, TensorSource],
    indices: Sequence[int],
    sink_for: Callable[[AlignedTensor], Sink],
    buffer_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
    device: str = "cpu",
) -> None:
    """Merge ``tensors`` from ingredients ``indices`` (``sources`` maps index -> open source).

    ``sink_for(tensor)`` returns the sink that receives it, so the caller decides sharding.
    ``progress(n)`` is told elements done. ``buffer_bytes`` bounds the working buffers of
    all threads together (default: the method's ``buffer_bytes``, else 512 MiB). ``threads``
    workers take items in turn (the method's ``max_threads`` caps it; with one, items run in
    order). ``device``: ``cpu``, or a CUDA device for methods with a ``merge_torch``.
    """
    budget = buffer_bytes or method.buffer_bytes or DEFAULT_BUFFER_BYTES
    threads = max(1, min(threads, method.max_threads or threads))
    per_element = bytes_per_element(len(indices))
    if method.whole_tensor:  # each thread holds whole tensors: fewer threads when they are large
        largest = max((t.meta.numel for t in tensors if t.action == "merge"), default=1)
        threads = max(1, min(threads, budget // max(1, largest * per_element)))
    rows = _row_length(method)
    if rows is not None:  # items of whole rows: fewer threads when one row outgrows an item
        longest = max((rows(t.shape) for t in tensors if t.action == "merge"), default=1)
        threads = max(1, min(threads, budget // max(1, longest * per_element)))
    step = chunk_elements(len(indices), threads, budget)
    runner = _runner(method, sources, indices, device, finite.current())
    items = work_items(tensors, step, whole_tensors=method.whole_tensor, row_length=rows)
    if threads == 1:
        for item in items:
            runner.run(item, sink_for(item.tensor))
            if progress:
                progress(item.count)
        return
    _run_on_threads(runner, items, sink_for, progress, threads)


def _row_length(method: TensorMethod) -> Callable[[tuple[int, ...]], int] | None:
    """The method's :meth:`~hf_soup.methods.base.TensorMethod.row_length`, when it overrides the default."""
    return None if type(method).row_length is TensorMethod.row_length else method.row_length


def _run_on_threads(runner, items: Iterator[WorkItem], sink_for: Callable[[AlignedTensor], Sink],
                    progress: Callable[[int], None] | None, threads: int) -> None:
    """``threads`` workers take the next item from ``items`` until none is left or one fails.

    Workers pull items themselves (no per-item hand-off through the main thread), so the
    interpreter lock changes hands as rarely as possible; the first error stops every
    worker after its current item and is raised here, once all of them have stopped.
    """
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                if errors:
                    return
                item = next(items, None)
            if item is None:
                return
            try:
                runner.run(item, sink_for(item.tensor))
            except BaseException as error:  # handed to the caller below
                with lock:
                    errors.append(error)
                return
            if progress:
                with lock:
                    progress(item.count)

    workers = [threading.Thread(target=work, name=f"hf-soup-merge-{n}", daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except BaseException as error:  # Ctrl-C in the main thread: stop the workers, then re-raise
        with lock:
            errors.append(error)
        for worker in workers:
            worker.join()
        raise
    if errors:
        raise errors[0]


def _runner(method: TensorMethod, sources: dict[int, TensorSource], indices: Sequence[int], device: str,
            guard: finite.FiniteGuard | None):
    """The item runner for ``device``: the host's numpy path, or the torch path on a GPU.

    ``guard`` (the run's non-finite check) is handed over explicitly: worker threads do not
    inherit the caller's context variables.
    """
    from .device import has_torch_path

    if device == "cpu" or not has_torch_path(method):
        return _CpuRunner(method, sources, indices, guard)
    from .device import DeviceRunner

    return DeviceRunner(method, sources, indices, device, guard)


__all__ = ["default_threads", "execute"]
