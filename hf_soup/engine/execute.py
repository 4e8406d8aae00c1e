"""Execute a merge: stream every aligned tensor through a tensor method into sinks."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..align import AlignedTensor
from ..io import dtypes
from ..io.source import TensorSource
from ..methods.base import ChunkInfo, TensorMethod
from . import chunks as _chunks
from .chunks import chunk_elements, iter_chunks
from .sinks import Sink


def _copy_tensor(tensor: AlignedTensor, source: TensorSource, sink: Sink, step: int) -> None:
    own_key = tensor.sources[tensor.copy_from]
    stored = source.meta(own_key).dtype
    numel = tensor.meta.numel
    for start in range(0, max(numel, 1), step):
        stop = min(numel, start + step)
        if stored == tensor.dtype:
            sink.append(tensor, source.read(own_key, start, stop))
        else:
            values = source.read_float32(own_key, start, stop, np.empty(stop - start, dtype=np.float32))
            sink.append(tensor, dtypes.from_float32(values, tensor.dtype))


def _merge_whole(method: TensorMethod, tensor: AlignedTensor, sources: Sequence[TensorSource],
                 indices: Sequence[int], sink: Sink) -> None:
    """A ``whole_tensor`` method: read the tensor's N versions whole, merge, write; keep nothing."""
    numel = tensor.meta.numel
    arrays = [source.read_float32(tensor.sources[index], 0, numel, np.empty(numel, dtype=np.float32))
              for source, index in zip(sources, indices)]
    values = method.merge(ChunkInfo(tensor.key, tensor.shape, 0, numel), arrays)
    del arrays
    sink.append(tensor, dtypes.to_storage(np.asarray(values), tensor.dtype))


def execute(
    method: TensorMethod,
    tensors: Sequence[AlignedTensor],
    sources: dict[int, TensorSource],
    indices: Sequence[int],
    sink_for: Callable[[AlignedTensor], Sink],
    buffer_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Merge ``tensors`` from ingredients ``indices`` (``sources`` maps index -> open source).

    Tensors are processed in the given order; ``sink_for(tensor)`` returns the sink that
    receives it, so the caller decides sharding. ``progress(n)`` is told elements done.
    ``buffer_bytes`` bounds the read buffers (default: the method's ``buffer_bytes``, else 128 MiB).
    A method with ``whole_tensor = True`` gets each tensor whole, read without prefetch.
    """
    if getattr(method, "whole_tensor", False):
        for tensor in tensors:
            sink = sink_for(tensor)
            if tensor.action == "copy":
                _copy_tensor(tensor, sources[tensor.copy_from], sink, _chunks.DEFAULT_BUFFER_BYTES // 4)
            else:
                _merge_whole(method, tensor, [sources[i] for i in indices], indices, sink)
            if progress:
                progress(tensor.meta.numel)
        return
    step = chunk_elements(len(indices), buffer_bytes or method.buffer_bytes or _chunks.DEFAULT_BUFFER_BYTES)
    step = max(1, min(step, max((t.meta.numel for t in tensors), default=1)))  # no larger than needed
    merged = [t for t in tensors if t.action == "merge"]
    merged_chunks = iter_chunks(merged, [sources[i] for i in indices], indices, step)
    for tensor in tensors:
        sink = sink_for(tensor)
        if tensor.action == "copy":
            _copy_tensor(tensor, sources[tensor.copy_from], sink, step)
            if progress:
                progress(tensor.meta.numel)
            continue
        while True:
            chunk = next(merged_chunks)
            assert chunk.tensor is tensor, "chunk stream out of order"
            info = ChunkInfo(tensor.key, tensor.shape, chunk.start, chunk.stop)
            values = method.merge(info, chunk.arrays)
            sink.append(tensor, dtypes.to_storage(np.asarray(values), tensor.dtype))
            if progress:
                progress(chunk.stop - chunk.start)
            if chunk.last:
                break
    merged_chunks.close()
