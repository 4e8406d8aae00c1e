"""Execute a merge: work items on a pool of threads, each read, merged, rounded once and written in place.

Every output tensor's place in its file is known before any work (the header is written
first), so a worker writes its item's bytes at their final offset and items finish in any
order: reads, math and writes of different items overlap on every core. numpy and torch
release the GIL in their kernels. The bytes do not depend on the thread count or the chunk
size: methods are elementwise (or see a whole tensor in one item) and each element is
rounded once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence

import numpy as np

from ..align import AlignedTensor
from ..io.source import TensorSource
from ..methods.base import ChunkInfo, TensorMethod
from ..io import dtypes
from .chunks import (DEFAULT_BUFFER_BYTES, ITEMS_PER_THREAD, ReadBuffers, WorkItem, bytes_per_element,
                     chunk_elements, read_copy, read_raw, widen, work_items)
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


CACHE_BLOCK = 1 << 16


class _Budget:
    """Bytes of work items in flight, bounded; one item is always admitted, however large."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.items = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, max_items: int) -> None:
        with self._cond:
            while self.items and (self.used + nbytes > self.limit or self.items >= max_items):
                self._cond.wait()
            self.used += nbytes
            self.items += 1

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self.items -= 1
            self._cond.notify_all()


class _CpuRunner:
    """Runs one item on the host: read the N ranges, merge with numpy, round once, write.

    The math runs over cache-sized blocks of the item (``CACHE_BLOCK`` elements; whole
    items for :attr:`~hf_soup.methods.base.TensorMethod.whole_tensor` methods), so each of
    its numpy passes reads from cache rather than memory.
    """

    def __init__(self, method: TensorMethod, sources: dict[int, TensorSource], indices: Sequence[int]):
        self.method = method
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
        block = item.count if self.method.whole_tensor else CACHE_BLOCK
        out = self.buffers.get("out", dtypes.STORAGE[tensor.dtype], item.count)
        for start in range(0, max(item.count, 1), block):
            stop = min(item.count, start + block)
            chunks = widen(raws, start, stop, self.buffers)
            info = ChunkInfo(tensor.key, tensor.shape, item.start + start, item.start + stop)
            out[start:stop] = round_to_storage(np.asarray(self.method.merge(info, chunks)), tensor.dtype)
        sink.put(tensor, item.start, out)


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
    all items in flight (default: the method's ``buffer_bytes``, else 256 MiB). ``threads``
    workers run items (the method's ``max_threads`` caps it); with one thread, items run
    in order. ``device``: ``cpu``, or a CUDA device for methods with a ``merge_torch``.
    """
    threads = max(1, min(threads, method.max_threads or threads))
    budget_bytes = buffer_bytes or method.buffer_bytes or DEFAULT_BUFFER_BYTES
    step = chunk_elements(len(indices), threads, budget_bytes)
    runner = _runner(method, sources, indices, device)
    items = work_items(tensors, step, whole_tensors=method.whole_tensor)
    per_element = bytes_per_element(len(indices))
    lock = threading.Lock()

    def run(item: WorkItem) -> None:
        runner.run(item, sink_for(item.tensor))
        if progress:
            with lock:
                progress(item.count)

    if threads == 1:
        for item in items:
            run(item)
        return
    budget = _Budget(budget_bytes)
    futures: set[Future] = set()
    with ThreadPoolExecutor(threads, thread_name_prefix="hf-soup-merge") as pool:
        try:
            for item in items:
                nbytes = item.count * per_element
                budget.acquire(nbytes, threads * ITEMS_PER_THREAD)
                failed = [f for f in futures if f.done() and f.exception() is not None]
                if failed:
                    budget.release(nbytes)
                    failed[0].result()
                future = pool.submit(run, item)
                future.add_done_callback(lambda _, n=nbytes: budget.release(n))
                futures = {f for f in futures if not (f.done() and f.exception() is None)} | {future}
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done():
                    future.result()
            wait(futures)
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _runner(method: TensorMethod, sources: dict[int, TensorSource], indices: Sequence[int], device: str):
    """The item runner for ``device``: the host's numpy path, or the torch path on a GPU."""
    from .device import has_torch_path

    if device == "cpu" or not has_torch_path(method):
        return _CpuRunner(method, sources, indices)
    from .device import DeviceRunner

    return DeviceRunner(method, sources, indices, device)


__all__ = ["default_threads", "execute"]
