"""The AME schedule: ingredient order, per-epoch shuffles, batches and learning rates.

One schedule is built per merge, before any tensor is read, and every tensor chunk
replays it from a fresh optimizer. Because the update is elementwise, running the
schedule chunk by chunk gives exactly what running it on the whole flattened model
at once would give.

>>> steps = build_schedule(3, epochs=2, batch_size=2, shuffle=False, seed=0,
...                        order=[2, 0, 1], lr=1.0, lr_schedule="harmonic")
>>> [(s.step, s.epoch, s.batch, s.lr) for s in steps]
[(1, 1, (2, 0), 1.0), (2, 1, (1,), 0.5), (3, 2, (2, 0), 0.3333333333333333), (4, 2, (1,), 0.25)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LR_SCHEDULES = ("harmonic", "constant", "cosine")
ORDERS = ("given", "ascending", "descending")


@dataclass(frozen=True)
class AmeStep:
    """One optimizer step: its number (from 1), epoch (from 1), ingredient batch and learning rate."""

    step: int
    epoch: int
    batch: tuple[int, ...]
    lr: float


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer ``step`` (counted from 1).

    * ``harmonic``: 1 / t, the paper's default (eq. 2: η_t = 1/t gives the running mean);
    * ``constant``: 1;
    * ``cosine``: ½(1 + cos(π (t − 1) / T)) over the T steps of the run, so the first
      step uses the full rate and the last one still a positive one.
    """
    if schedule == "harmonic":
        return 1.0 / step
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total_steps))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def ingredient_order(
    num_ingredients: int,
    order: str,
    scores: Sequence[float] | None = None,
    higher_is_better: bool = True,
) -> list[int]:
    """Positions of the ingredients in the order AME visits them.

    ``given`` keeps the list order. ``ascending`` goes from the weakest ingredient to
    the strongest by validation score (``descending``: strongest first), whatever the
    metric's direction; ties keep the given order.

    >>> ingredient_order(3, "descending", [0.2, 0.9, 0.5])
    [1, 2, 0]
    >>> ingredient_order(3, "ascending", [0.2, 0.9, 0.5], higher_is_better=False)
    [1, 2, 0]
    """
    if order == "given":
        return list(range(num_ingredients))
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if scores is None or len(scores) != num_ingredients:
        raise ValueError(f"order {order!r} needs one validation score per ingredient")
    quality = [s if higher_is_better else -s for s in scores]
    ranked = sorted(range(num_ingredients), key=lambda i: (quality[i], i))  # weakest first
    if order == "descending":
        ranked = sorted(range(num_ingredients), key=lambda i: (-quality[i], i))
    return ranked


def epoch_orders(order: Sequence[int], epochs: int, shuffle: bool, seed: int) -> list[list[int]]:
    """The visiting order of every epoch: ``order`` each time, or a fresh seeded shuffle.

    The shuffles come from ``numpy.random.default_rng(seed)``, one permutation per
    epoch, so a seed fixes them on every platform.
    """
    if not shuffle:
        return [list(order) for _ in range(epochs)]
    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.permutation(np.asarray(order))] for _ in range(epochs)]


def build_schedule(
    num_ingredients: int,
    *,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    order: Sequence[int],
    lr: float,
    lr_schedule: str,
) -> list[AmeStep]:
    """Every optimizer step of an AME run, in order.

    Each epoch visits all ``num_ingredients`` ingredients once, in consecutive batches
    of ``batch_size`` (the last batch of an epoch may be smaller).
    """
    if sorted(order) != list(range(num_ingredients)):
        raise ValueError("order must be a permutation of the ingredient positions")
    per_epoch = math.ceil(num_ingredients / batch_size)
    total = epochs * per_epoch
    steps: list[AmeStep] = []
    for epoch, visit in enumerate(epoch_orders(order, epochs, shuffle, seed), start=1):
        for start in range(0, num_ingredients, batch_size):
            number = len(steps) + 1
            steps.append(AmeStep(number, epoch, tuple(visit[start:start + batch_size]),
                                 lr * lr_factor(lr_schedule, number, total)))
    return steps
