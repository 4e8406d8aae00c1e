"""A data-parallel evaluation pass where one process's failure stops every process.

In a pass under ``torchrun`` / ``accelerate launch`` each process computes its batch, then
all gather the results. A process whose batch fails (out of memory, a bad batch) must not
leave the others waiting in that gather, nor meet them in a different collective: each
batch's own computation ends with the launch's status exchange
(:meth:`hf_soup.distributed.Dist.stage`), so the failed process raises its error and the
others a :class:`~hf_soup.errors.RankFailedError` naming it, all before the gather. One
process (or a pass run alone, see :mod:`.shared_logits`) exchanges nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


BATCH_STAGE = "evaluating its batch"


def status_dist(accelerator: Any) -> Any:
    """The :class:`~hf_soup.distributed.Dist` that exchanges statuses for ``accelerator``'s processes (``None``: one)."""
    if getattr(accelerator, "num_processes", 1) == 1:
        return None
    from ..distributed import get_dist

    device = getattr(accelerator.device, "type", str(accelerator.device))
    return get_dist("cpu" if device == "cpu" else "cuda")


def batch_stage(accelerator: Any) -> AbstractContextManager:
    """The context of one batch's computation in a pass on ``accelerator``'s processes."""
    dist = status_dist(accelerator)
    return nullcontext() if dist is None else dist.stage(BATCH_STAGE)
