"""The pre-pass: a method with per-tensor statistics reads each merged tensor in streamed chunks first.

For a method with :attr:`~hf_soup.methods.base.TensorMethod.needs_prepass`, call
:func:`prepass` with the arguments of :func:`~hf_soup.engine.execute.execute` before it:
each merged tensor is handed to the method's ``prepare_tensor`` with a reader of bounded
chunks, on up to ``threads`` workers (one tensor each), so memory stays
O(threads x N x chunk) and the merge itself streams chunk by chunk like any elementwise soup.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from ..align import AlignedTensor
from ..io.source import TensorSource
from ..methods.base import ChunkInfo, TensorMethod
from .chunks import ReadBuffers, WorkItem, read_inputs
from .heap import keep_freed_blocks


def prepass(method: TensorMethod, tensors: Sequence[AlignedTensor], sources: dict[int, TensorSource],
            indices: Sequence[int], threads: int = 1) -> None:
    """Call ``method.prepare_tensor`` for every tensor of ``tensors`` that is merged (not copied)."""
    if not method.needs_prepass or method.whole_tensor:
        return
    keep_freed_blocks()  # their per-block temporaries: from the heap, not mapped afresh each time
    todo = [t for t in tensors if t.action == "merge"]
    selected = [sources[i] for i in indices]
    buffers = ReadBuffers()

    def prepare(tensor: AlignedTensor) -> None:
        def read(start: int, stop: int) -> list[np.ndarray]:
            return read_inputs(WorkItem(tensor, start, stop), selected, indices, buffers)

        method.prepare_tensor(ChunkInfo(tensor.key, tensor.shape, 0, tensor.meta.numel), read)

    threads = max(1, min(threads, method.max_threads or threads, method.prepass_threads or threads, len(todo)))
    if threads == 1:
        for tensor in todo:
            prepare(tensor)
        return
    lock = threading.Lock()
    queue = iter(todo)
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                tensor = None if errors else next(queue, None)
            if tensor is None:
                return
            try:
                prepare(tensor)
            except BaseException as error:  # raised in the caller below
                with lock:
                    errors.append(error)
                return

    workers = [threading.Thread(target=work, name=f"hf-soup-prepass-{n}", daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


__all__ = ["prepass"]
