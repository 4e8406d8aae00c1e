"""Candidate soups as in-memory state dicts, computed by the streaming engine on the host.

The :class:`~hf_soup.evaluation.Evaluator` forms its candidates on the evaluation device
instead (:mod:`.device_candidates`) and falls back to this module where the model's
weights are not the checkpoint's renamed.

A candidate is built tensor by tensor from the ingredients' lazy sources (never N
models in memory) and cast to each tensor's output dtype, so the weights that are
scored are exactly the weights a merge with the same plan would write.

>>> builder = SoupBuilder(alignment.tensors, sources)          # doctest: +SKIP
>>> state_dict = builder.state_dict([0, 2])                     # uniform soup of ingredients 0 and 2  # doctest: +SKIP
>>> running = builder.running_sum(); running.add(0)             # greedy: a running sum ...  # doctest: +SKIP
>>> candidate = running.candidate(2)                            # ... + one streamed ingredient  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

import numpy as np

from ..methods.base import ChunkInfo, TensorMethod


class _NullSink:
    def put(self, tensor: Any, start: int, values: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class SoupBuilder:
    """Builds candidate soups from aligned tensors and open sources (index -> source)."""

    def __init__(self, tensors: Sequence[Any], sources: Mapping[int, Any]):
        self.tensors = list(tensors)
        self.sources = dict(sources)

    @property
    def num_ingredients(self) -> int:
        return len(self.sources)

    def merge(self, method: TensorMethod, indices: Sequence[int]) -> dict[str, Any]:
        """Stream ``method`` over ingredients ``indices`` into a checkpoint-keyed torch state dict."""
        from ..engine import execute
        from ..engine.prepass import prepass
        from ..engine.sinks import StateDictSink

        sink = StateDictSink()
        prepass(method, self.tensors, self.sources, list(indices))
        execute(method, self.tensors, self.sources, list(indices), lambda _: sink)
        return sink.state_dict

    def state_dict(self, indices: Sequence[int], weights: Sequence[float] | None = None) -> dict[str, Any]:
        """The uniform (or ``weights``-weighted) soup of ``indices``, in the order given."""
        from ..methods.uniform import UniformSoup
        from ..methods.weighted import WeightedSoup

        if weights is None:
            method: TensorMethod = UniformSoup(UniformSoup.Params())
        else:
            method = WeightedSoup(WeightedSoup.Params(weights=list(weights)))
        return self.merge(method, indices)

    def ingredient(self, index: int) -> dict[str, Any]:
        """Ingredient ``index``'s own weights (output dtypes, checkpoint keys)."""
        return self.state_dict([index])

    def running_sum(self) -> "RunningSum":
        """An empty float64 running sum over these tensors (greedy soup)."""
        return RunningSum(self)


class _PlusSum(TensorMethod):
    """(running sum + the streamed ingredient) / (count + 1), elementwise."""

    name = "_running_sum_candidate"

    def __init__(self, running: "RunningSum"):
        super().__init__(TensorMethod.Params())
        self.running = running

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        total = self.running.sums.get(info.key)
        if total is None:
            return chunks[0]
        out = total[info.start : info.stop] + chunks[0]  # float64, as UniformSoup adds
        out /= np.float64(self.running.count + 1)
        return out


class _Accumulate(TensorMethod):
    name = "_running_sum_add"

    def __init__(self, running: "RunningSum"):
        super().__init__(TensorMethod.Params())
        self.running = running
        self.lock = threading.Lock()

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        with self.lock:
            total = self.running.sums.get(info.key)
            if total is None:
                total = self.running.sums[info.key] = np.zeros(int(np.prod(info.shape, dtype=np.int64)), np.float64)
        if self.running.count:
            total[info.start : info.stop] += chunks[0]
        else:  # the first term itself, as UniformSoup starts its sum (keeps -0.0)
            total[info.start : info.stop] = chunks[0]
        return chunks[0]


class RunningSum:
    """The float64 sum of the ingredients kept so far; two models' worth of float32 memory.

    ``candidate(i)`` streams ingredient ``i`` once and returns the uniform soup of the
    kept ones plus ``i``; ``add(i)`` streams it again into the sum. The additions happen
    in the order of the calls, exactly as :class:`~hf_soup.methods.uniform.UniformSoup`
    adds its inputs in plan order, so a plan listing the kept ingredients in that order
    writes bit-identical weights.
    """

    def __init__(self, builder: SoupBuilder):
        self.builder = builder
        self.sums: dict[str, np.ndarray] = {}
        self.count = 0
        self.members: list[int] = []

    def candidate(self, index: int) -> dict[str, Any]:
        """The soup of the kept ingredients and ``index`` as a state dict."""
        return self.builder.merge(_PlusSum(self), [index])

    def add(self, index: int) -> None:
        """Add ingredient ``index`` to the sum."""
        from ..engine import execute

        execute(_Accumulate(self), self.builder.tensors, self.builder.sources, [index], lambda _: _NullSink())
        self.count += 1
        self.members.append(index)
