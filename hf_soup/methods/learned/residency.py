"""Learned training within ``evaluation.device_memory``: which ingredient differences stay on the device.

Training a learned soup holds, on the evaluation device, float32 copies of the model's
parameters: the ingredients' mean, the soup, its gradient (and, for the simplex variant
with ``model_batch`` < K, the fixed rest of the soup) — these cannot be streamed, every
step needs them whole — plus the differences ``theta_k - mean`` of the ``model_batch``
loaded ingredients, one ``(model_batch, numel)`` float32 stack per parameter tensor.

:func:`plan_residency` keeps the stacks resident, tensor by tensor in the model's order,
as far as the budget allows after the fixed part; the others are streamed: formed again
from the ingredients' tensors (:meth:`~hf_soup.evaluation.device_candidates.DeviceCandidates.ingredient_parameter`,
through pinned host buffers) each time a step uses them, with the same operations, so
the coefficients and the written soup are the same bits. A budget below the fixed part
plus room to form the largest streamed stack is refused before any training step, with
the amount needed. The task model itself and the forward pass's activations are not
counted (they are the evaluation's, whatever the method).

>>> plan = plan_residency({"a": 1000, "b": 10}, model_batch=2, budget=10**6, device="cpu")
>>> sorted(plan.resident), plan.streamed
(['a', 'b'], [])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import EvaluationError

_FLOAT32 = 4
#: Besides a streamed ``(model_batch, numel)`` stack: the ingredient's tensor as read, as rounded, and its difference.
_STREAM_TEMPORARIES = 3


@dataclass
class Residency:
    """Which parameters' difference stacks stay on the device, and the bytes behind that choice."""

    budget: int
    resident: set[str]
    streamed: list[str]
    fixed_bytes: int
    all_resident_bytes: int
    training_bytes: int

    def report(self) -> dict[str, Any]:
        """The ``training_memory`` entry of the learned soup's report details."""
        return {"budget": self.budget, "bytes": self.training_bytes, "all_resident_bytes": self.all_resident_bytes,
                "resident_parameters": len(self.resident), "streamed_parameters": len(self.streamed)}


def _size(nbytes: int) -> str:
    from ...evaluation.device_candidates import _size

    return _size(nbytes)


def plan_residency(numels: dict[str, int], *, model_batch: int, budget: int, device: Any, simplex_rest: bool = False,
                   streamable: set[str] | None = None, evaluation_bytes: int = 0) -> Residency:
    """Resident and streamed difference stacks for parameters ``numels`` (name -> elements, in model order).

    ``budget``: the bytes the training may use; ``evaluation_bytes``: the rest of
    ``evaluation.device_memory``, held by the evaluation (for the error message).
    ``streamable``: the parameters that can be formed again from the ingredients (all when
    ``None``); the others must be resident. Raises :class:`EvaluationError` when the budget
    cannot hold the fixed part and what must be resident.
    """
    total = sum(numels.values())
    fixed = _FLOAT32 * total * (4 if simplex_rest else 3)
    stacks = {name: _FLOAT32 * model_batch * n for name, n in numels.items()}
    all_resident = fixed + sum(stacks.values())
    if all_resident <= budget:
        return Residency(budget, set(numels), [], fixed, all_resident, all_resident)
    can_stream = [n for n in numels if streamable is None or n in streamable]
    pinned = [n for n in numels if n not in can_stream]
    largest = max(can_stream, key=lambda n: numels[n], default=None)
    room = 0 if largest is None else _FLOAT32 * (model_batch + _STREAM_TEMPORARIES) * numels[largest]
    need = fixed + room + sum(stacks[n] for n in pinned)
    if need > budget:
        what = (f"the float32 mean, soup and gradient{', and the soup outside the model batch' if simplex_rest else ''} "
                f"of the model's {total:,} parameters")
        if largest is not None:
            what += f", and room to form {model_batch} ingredient differences of its largest tensor {largest!r}"
        if pinned:
            what += (f", and the differences of {len(pinned)} tensor(s) that cannot be streamed (this model loads "
                     "through a weight conversion)")
        held = f", of which the evaluation holds {_size(evaluation_bytes)}" if evaluation_bytes else ""
        raise EvaluationError(
            f"evaluation.device_memory: training the learned soup's coefficients on {device} needs at least "
            f"{_size(need)} ({what}), more than the {_size(budget)} the memory budget of "
            f"{_size(budget + evaluation_bytes)} leaves it{held} (with every difference resident it needs "
            f"{_size(all_resident)}); raise evaluation.device_memory (bytes, or e.g. '8GiB') by at least "
            f"{_size(need - budget)}, or train on a device with more memory"
        )
    resident, streamed, used = set(pinned), [], need
    for name in can_stream:
        if used + stacks[name] <= budget:
            resident.add(name)
            used += stacks[name]
        else:
            streamed.append(name)
    return Residency(budget, resident, streamed, fixed, all_resident, used)
