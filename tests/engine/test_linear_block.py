"""The engine's linear path (inputs summed one at a time from their stored bytes) gives the general path's bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_soup.align import align
from hf_soup.engine.chunks import work_items
from hf_soup.engine.execute import BLOCK, _CpuRunner
from hf_soup.engine.finite import FiniteGuard
from hf_soup.engine.sinks import StateDictSink
from hf_soup.errors import NonFiniteError
from hf_soup.io.torch_source import StateDictSource
from hf_soup.methods.linear_math import linear_combination
from hf_soup.methods.registry import build_method

TORCH = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
SHAPES = ((BLOCK + 4099,), (65, 67), (1,))  # one tensor spans two blocks and ends mid-block


def _sources(dtypes, special=None):
    """One state dict per dtype in ``dtypes``; ``special(i, tensors)`` may plant values."""
    sources = {}
    for i, dtype in enumerate(dtypes):
        gen = torch.Generator().manual_seed(i)
        tensors = {f"t{n}": (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(TORCH[dtype])
                   for n, shape in enumerate(SHAPES)}
        if special:
            special(i, tensors)
        sources[i] = StateDictSource(tensors, origin=f"sd{i}")
    return sources


def _general(method):
    """The same soup through the general path: all inputs widened, then the reference ``linear_combination``."""
    cls = type(method)

    def merge(self, info, chunks):
        return linear_combination(chunks, *cls.linear_terms(self, len(chunks), info.key))

    return type("General", (cls,), {"linear_terms": lambda self, count, key=None: None, "merge": merge})(method.params)


def _merge(method, sources, step, guard=None):
    alignment = align(list(sources.values()), [f"sd{i}" for i in sources])
    runner = _CpuRunner(method, sources, list(sources), guard)
    sink = StateDictSink()
    for item in work_items(alignment.tensors, step):
        runner.run(item, sink)
    return {key: value.view(torch.uint8) for key, value in sink.state_dict.items()}


def _same(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


CASES = [("uniform", {}), ("weighted", {"weights": [0.3, -1.25, 2.0]}),
         ("weighted", {"weights": [1e-3, 0.0, 7.0], "normalize": False}), ("weighted", {"weights": [1, 2, 3]})]


@pytest.mark.parametrize("dtypes", [["BF16"] * 3, ["F16"] * 3, ["F32"] * 3, ["F64"] * 3, ["BF16", "F16", "F32"]])
@pytest.mark.parametrize("method,params", CASES)
def test_the_linear_path_gives_the_general_path_bytes(dtypes, method, params):
    sources = _sources(dtypes)
    merger = build_method(method, params)
    assert merger.linear_terms(3) is not None
    expected = _merge(_general(merger), sources, 1 << 20)
    for step in (1 << 20, 4093):
        _same(_merge(merger, sources, step), expected)


def _plant_nonfinite(i, tensors):
    flat = tensors["t0"].view(-1)
    if i == 1:
        flat[5], flat[BLOCK + 17] = float("nan"), float("inf")


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [1.0, 0.0, 2.0]])
def test_non_finite_inputs_are_counted_alike_and_refused_naming_the_ingredient(weights):
    sources = _sources(["BF16"] * 3, _plant_nonfinite)
    merger = build_method("weighted", {"weights": weights})
    guards = [FiniteGuard(["a", "b", "c"], allow=True) for _ in range(2)]
    _same(_merge(merger, sources, 1 << 20, guards[0]), _merge(_general(merger), sources, 1 << 20, guards[1]))
    assert guards[0].report() == guards[1].report()
    assert guards[0].report()["inputs"] == {"b": {"t0": 2}}  # a zero weight does not hide a bad ingredient
    with pytest.raises(NonFiniteError, match=r"ingredient b: \d+ non-finite value\(s\) \(NaN or Inf\) in tensor .t0."):
        _merge(merger, sources, 1 << 20, FiniteGuard(["a", "b", "c"]))


def test_an_overflow_of_the_output_dtype_is_found_by_the_quick_check():
    def near_the_top(i, tensors):
        tensors["t1"].view(-1)[3] = 65000.0

    sources = _sources(["F16"] * 3, near_the_top)
    merger = build_method("weighted", {"weights": [1.0, 1.0, 1.0], "normalize": False})
    guards = [FiniteGuard(["a", "b", "c"], allow=True) for _ in range(2)]
    _same(_merge(merger, sources, 1 << 20, guards[0]), _merge(_general(merger), sources, 1 << 20, guards[1]))
    assert guards[0].report()["overflow"] == guards[1].report()["overflow"] == {"t1": 1}
    with pytest.raises(NonFiniteError, match="overflow float16"):
        _merge(merger, sources, 1 << 20, FiniteGuard(["a", "b", "c"]))


def test_dividing_by_a_power_of_two_is_the_division_itself():
    from hf_soup.engine.linear_block import _scale

    values = np.random.default_rng(0).standard_normal(10_000) * 1e-300
    for divisor in (2.0, 4.0, 0.5, -8.0, 3.0, 1024.0):
        operation, operand = _scale(divisor)
        np.testing.assert_array_equal(operation(values, operand), values / divisor)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [1.0, 0.0, 2.0]])
def test_the_torch_path_counts_non_finite_inputs_as_the_host_does(weights):
    from hf_soup.engine.device import DeviceRunner

    sources = _sources(["BF16"] * 3, _plant_nonfinite)
    merger = build_method("weighted", {"weights": weights})
    alignment = align(list(sources.values()), [f"sd{i}" for i in sources])
    guards = [FiniteGuard(["a", "b", "c"], allow=True) for _ in range(2)]
    runners = [_CpuRunner(merger, sources, list(sources), guards[0]),
               DeviceRunner(merger, sources, list(sources), "cpu", guards[1])]
    outputs = []
    for runner in runners:
        sink = StateDictSink()
        for item in work_items(alignment.tensors, 1 << 20):
            runner.run(item, sink)
        outputs.append({key: value.view(torch.uint8) for key, value in sink.state_dict.items()})
    _same(*outputs)
    assert guards[0].report() == guards[1].report()
