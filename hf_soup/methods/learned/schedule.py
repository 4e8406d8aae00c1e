"""Seeded schedules shared by the block-coordinate and the full-graph implementations.

* :func:`model_batches` — the order in which ingredients are loaded: each outer epoch is
  a fresh permutation of the K ingredients cut into batches of ``b`` (the last one may
  be smaller), so every ingredient is visited once per outer epoch (paper §4.4: one
  model epoch is ceil(K / b) outer iterations);
* :func:`data_stream` — an endless stream of data batches, epoch after epoch;
* :func:`lr_lambda` — the learning-rate factor: linear warmup then cosine decay
  (default), linear decay, or constant.

>>> model_batches(5, 2, outer_epochs=1, seed=0)
[[2, 4], [3, 0], [1]]
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import numpy as np

LR_SCHEDULES = ("cosine", "linear", "constant")


def model_batches(num_models: int, batch_size: int, *, outer_epochs: int, seed: int) -> list[list[int]]:
    """The model mini-batches of every outer epoch, in order (seeded reshuffles)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(outer_epochs):
        order = rng.permutation(num_models).tolist()
        batches.extend(order[i:i + batch_size] for i in range(0, num_models, batch_size))
    return batches


def data_stream(batches_of_epoch: Callable[[int], Iterable[Any]]) -> Iterator[Any]:
    """Yield ``batches_of_epoch(0)``, then ``batches_of_epoch(1)``, ... without end."""
    epoch = 0
    while True:
        empty = True
        for batch in batches_of_epoch(epoch):
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data yields no batches")
        epoch += 1


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Factor applied to ``lr`` before optimizer step ``s`` (0-based), for ``LambdaLR``.

    >>> f = lr_lambda("cosine", 10, 2)
    >>> [round(f(s), 3) for s in (0, 1, 2, 9)]
    [0.5, 1.0, 1.0, 0.038]
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
