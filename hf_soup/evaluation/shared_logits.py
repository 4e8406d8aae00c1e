"""Per-ingredient logit passes shared out across processes (``torchrun`` / ``accelerate launch``).

With P processes, the logit cache's N passes are dealt round-robin: the process at
position ``p % P`` of the ingredient list runs ingredient p's pass **alone, over the whole
split** (its own task model, the split's own batches, no gathering), so each ingredient's
logits are computed once in all and are the rows a single process computes. The
processes then exchange status (one failure stops all: :meth:`~hf_soup.distributed.Dist.stage`)
and broadcast each ingredient's rows from its owner to every process, in bounded chunks,
over the launch's process group (on the device for NCCL). Every process ends with the
same cache, the same scores and the same pass counts as one process.

Evaluators whose passes are not their own data loader (a Trainer's evaluation loop) keep
the data-parallel passes (:func:`can_share` is false).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .local_accelerator import NoCollectives, OnDevice

#: Bytes broadcast per collective.
CHUNK_BYTES = 32 << 20


def can_share(evaluator: Any) -> bool:
    """Whether ``evaluator`` runs in several processes and can run a pass alone (its own data loader)."""
    accelerator = getattr(evaluator, "_accelerator", None)
    return (accelerator is not None and getattr(accelerator, "num_processes", 1) > 1
            and getattr(evaluator, "dataloader", None) is not None and hasattr(evaluator, "_dataloader"))


def owners(indices: Sequence[int], world_size: int) -> dict[int, int]:
    """``{ingredient: process}``, round-robin in list order (process 0 owns the first).

    >>> owners([0, 1, 2, 3, 4], 2)
    {0: 0, 1: 1, 2: 0, 3: 1, 4: 0}
    """
    return {index: position % world_size for position, index in enumerate(indices)}


class _Alone(NoCollectives):
    """The evaluator's accelerator as seen by a pass run by this process alone: no sharding, no gathering."""

    def __init__(self, accelerator: Any):
        self.device = accelerator.device
        self.is_local_main_process = accelerator.is_local_main_process
        self.is_main_process = accelerator.is_main_process


@contextmanager
def alone(evaluator: Any) -> Iterator[None]:
    """Passes of ``evaluator`` inside run on this process alone, over the whole split."""
    saved = evaluator._accelerator, evaluator.dataloader
    evaluator._accelerator = _Alone(saved[0])
    evaluator.dataloader = OnDevice(evaluator._dataloader(), saved[0].device)
    try:
        yield
    finally:
        evaluator._accelerator, evaluator.dataloader = saved


def build_shared(evaluator: Any, indices: Sequence[int], run_pass: Callable[[int], Any],
                 receive: Callable[[int, int, int], Any]) -> tuple[dict[int, Any], dict[int, float], np.ndarray]:
    """Run this process's share of the passes, then exchange every ingredient's rows.

    ``run_pass(index)`` runs one pass (alone) and returns its closed row writer (``score()``,
    ``labels()``, ``num_classes``, ``rows``, ``read()``); ``receive(index, rows, classes)``
    returns a sink for another process's rows (``write(chunk)``, ``close()``). Returns
    ``({index: writer or sink}, {index: score}, labels)``, the same on every process.
    """
    from ..distributed import get_dist

    dist = get_dist("cpu" if evaluator.device.type == "cpu" else "cuda")
    owner = owners(indices, dist.world_size)
    full, passes = evaluator.num_full_evaluations, evaluator.num_logit_passes
    mine: dict[int, Any] = {}
    with dist.stage("computing its ingredients' logits"):
        with alone(evaluator):
            for index in indices:
                if owner[index] == dist.rank:
                    mine[index] = run_pass(index)
    # every pass counts once, wherever it ran: the counts equal one process's
    evaluator.num_full_evaluations, evaluator.num_logit_passes = full + len(indices), passes + len(indices)
    shapes: dict[int, tuple[float, int, int]] = {}
    for part in dist.all_gather({i: (w.score(), w.rows, w.num_classes or 0) for i, w in mine.items()}):
        shapes.update(part)
    labels = dist.broadcast(mine[indices[0]].labels() if dist.rank == owner[indices[0]] else None, owner[indices[0]])
    out: dict[int, Any] = {}
    with dist.stage("exchanging the ingredients' logits"):
        for index in indices:
            _, rows, classes = shapes[index]
            if owner[index] == dist.rank:
                rows_of = mine[index].read()
                for start, stop in _chunks(rows, classes, rows_of.dtype.itemsize):
                    dist.broadcast_tensor(_as_bytes(rows_of[start:stop]), owner[index])
                out[index] = mine[index]
            else:
                sink = receive(index, rows, classes)
                for start, stop in _chunks(rows, classes, sink.dtype.itemsize):
                    size = (stop - start) * classes * sink.dtype.itemsize
                    chunk = dist.broadcast_tensor(_empty_bytes(size), owner[index])
                    sink.write(chunk.cpu().numpy().tobytes())
                sink.close()
                out[index] = sink
    dist.logit_owners = {int(i): r for i, r in owner.items()}
    return out, {i: shapes[i][0] for i in indices}, labels


def _chunks(rows: int, classes: int, itemsize: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_BYTES // max(1, classes * itemsize))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _as_bytes(array: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy())


def _empty_bytes(size: int) -> Any:
    import torch

    return torch.empty(size, dtype=torch.uint8)


__all__ = ["alone", "build_shared", "can_share", "owners"]
