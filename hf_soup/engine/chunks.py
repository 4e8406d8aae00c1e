"""Read aligned tensors chunk by chunk, in float32, with a bounded background prefetch."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..align import AlignedTensor
from ..io.source import TensorSource

DEFAULT_BUFFER_BYTES = 128 * 1024 * 1024
_MIN_CHUNK = 1 << 16
_PREFETCH = 2


def chunk_elements(num_inputs: int, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> int:
    """Elements per chunk so that all read buffers together stay within ``buffer_bytes``."""
    sets = _PREFETCH + 1
    return max(_MIN_CHUNK, buffer_bytes // (4 * max(1, num_inputs) * sets))


@dataclass
class Chunk:
    """Flat elements ``[start, stop)`` of ``tensor``: one float32 array per selected ingredient."""

    tensor: AlignedTensor
    start: int
    stop: int
    arrays: list[np.ndarray]
    last: bool


def _ranges(numel: int, step: int) -> Iterator[tuple[int, int]]:
    if numel == 0:
        yield 0, 0
    for start in range(0, numel, step):
        yield start, min(numel, start + step)


def iter_chunks(
    tensors: Sequence[AlignedTensor],
    sources: Sequence[TensorSource],
    indices: Sequence[int],
    step: int,
) -> Iterator[Chunk]:
    """Yield every ``merge`` tensor's chunks for ingredients ``indices`` (sources[i] = ingredient indices[i]).

    A background thread reads ahead up to two chunks into a fixed pool of buffers, so
    reading overlaps the merge math and memory stays bounded. A consumer must be done
    with a chunk's arrays before asking for the next-but-two chunk.
    """
    pool: queue.Queue = queue.Queue()
    for _ in range(_PREFETCH + 1):
        pool.put([np.empty(step, dtype=np.float32) for _ in indices])
    ready: queue.Queue = queue.Queue(maxsize=_PREFETCH)
    stop_event = threading.Event()

    def produce() -> None:
        try:
            for tensor in tensors:
                bounds = list(_ranges(tensor.meta.numel, step))
                for n, (start, stop) in enumerate(bounds):
                    buffers = pool.get()
                    if stop_event.is_set():
                        return
                    arrays = [
                        source.read_float32(tensor.sources[index], start, stop, buffer[: stop - start])
                        for source, index, buffer in zip(sources, indices, buffers)
                    ]
                    ready.put((Chunk(tensor, start, stop, arrays, n == len(bounds) - 1), buffers))
            ready.put(None)
        except BaseException as error:  # handed to the consumer, which re-raises it
            ready.put(error)

    thread = threading.Thread(target=produce, name="hf-soup-prefetch", daemon=True)
    thread.start()
    previous = None
    try:
        while True:
            item = ready.get()
            if previous is not None:
                pool.put(previous)
                previous = None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            chunk, previous = item
            yield chunk
    finally:
        stop_event.set()
        if previous is not None:
            pool.put(previous)
        pool.put([np.empty(0, dtype=np.float32) for _ in indices])
        while thread.is_alive():
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
            pool.put([np.empty(0, dtype=np.float32) for _ in indices])
        thread.join()
