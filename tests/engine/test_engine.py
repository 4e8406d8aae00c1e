"""Engine v2: soups rounded once, identical bytes for any thread count, chunking and path (numpy / torch)."""

from __future__ import annotations

import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_soup
from hf_soup.align import align
from hf_soup.engine.chunks import work_items
from hf_soup.engine.device import DeviceRunner
from hf_soup.engine.execute import _CpuRunner
from hf_soup.engine.rounding import round_to_storage, round_to_storage_torch
from hf_soup.engine.sinks import StateDictSink
from hf_soup.errors import CorruptWeightsError
from hf_soup.io.torch_source import StateDictSource
from hf_soup.methods.registry import build_method

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _checkpoint(folder, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _random_tensors(seed, dtype, shapes=((257, 33), (4099,), (3,))):
    gen = torch.Generator().manual_seed(seed)
    tensors = {f"layer.{i}.weight": (torch.randn(shape, generator=gen) * 10.0 ** (i - 1)).to(dtype)
               for i, shape in enumerate(shapes)}
    tensors["layer.0.weight"].view(-1)[:3] = torch.tensor([-0.0, 0.0, -0.0])  # signed zeros are kept
    return tensors


def _exact_bf16_or_f16(value: Fraction, dtype: torch.dtype) -> torch.Tensor:
    """The correctly rounded (nearest, ties to even) value of ``value`` in ``dtype``, by exact search."""
    bits = int(torch.tensor(float(value), dtype=torch.float64).to(dtype).view(torch.int16))
    candidates = [torch.tensor(b, dtype=torch.int16).view(dtype) for b in (bits - 1, bits, bits + 1)
                  if -(2**15) <= b < 2**15]
    candidates = [c for c in candidates if torch.isfinite(c)]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(c.view(torch.int16)) & 1))


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
def test_a_checkpoint_souped_with_itself_is_that_checkpoint_bit_for_bit(tmp_path, dtype):
    tensors = _random_tensors(0, DTYPES[dtype])
    one = _checkpoint(tmp_path / "one", tensors)
    copies = [one] + [shutil.copytree(one, tmp_path / f"copy{i}") for i in range(2)]
    for n, (method, params) in enumerate([("uniform", {}), ("weighted", {"weights": [0.1, 0.7, 0.2]}),
                                          ("weighted", {"weights": [1, 2, 3]})]):
        out = hf_soup.soup(copies, method=method, output_dir=tmp_path / f"soup-{n}",
                           threads=2, **params).output_dir
        assert (out / "model.safetensors").read_bytes()[-2000:] == (one / "model.safetensors").read_bytes()[-2000:]
        soup = load_file(str(out / "model.safetensors"))
        assert all(torch.equal(soup[k].view(torch.uint8), v.view(torch.uint8)) for k, v in tensors.items())


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_weighted_soups_are_correctly_rounded_against_a_float64_reference(tmp_path, dtype):
    torch_dtype = DTYPES[dtype]
    inputs = [_random_tensors(seed, torch_dtype) for seed in range(3)]
    paths = [_checkpoint(tmp_path / f"in{i}", t) for i, t in enumerate(inputs)]
    weights = [1, 2, 3]
    soup = load_file(str(hf_soup.soup(paths, method="weighted", weights=weights, output_dir=tmp_path / "soup",
                                      threads=2).output_dir / "model.safetensors"))
    for key in inputs[0]:
        exact = sum(w * t[key].double() for w, t in zip(weights, inputs)) / sum(weights)  # exact: few bits
        assert torch.equal(soup[key], exact.to(torch_dtype)), key


def test_round_to_storage_rounds_float64_once_where_float32_would_round_twice():
    rng = np.random.default_rng(1)
    # values a hair above / below bfloat16 and float16 midpoints: float32 first would land on the midpoint
    base = rng.uniform(0.5, 2.0, 400).astype(np.float32).astype(np.float64)
    for dtype, storage_dtype, step in (("BF16", torch.bfloat16, 2.0**-8), ("F16", torch.float16, 2.0**-11)):
        lattice = np.floor(base / step) * step
        values = np.concatenate([lattice + step / 2 + 2.0**-40, lattice + step / 2 - 2.0**-40,
                                 lattice + step / 2, -(lattice + step / 2 + 2.0**-35),
                                 rng.standard_normal(400) * 1e3, [0.0, -0.0, np.inf, -np.inf, 1e300, 1e-300]])
        rounded = round_to_storage(values, dtype)
        got = torch.from_numpy(rounded.view(np.int16)).view(storage_dtype)
        for value, result in zip(values, got):
            if not np.isfinite(value) or abs(value) > 1e5 or value == 0:  # no rounding subtleties: as torch
                reference = torch.tensor(value, dtype=torch.float64).to(storage_dtype)
                assert result.view(torch.int16) == reference.view(torch.int16), value
                continue
            expected = _exact_bf16_or_f16(Fraction(float(value)), storage_dtype)
            assert result.view(torch.int16) == expected.view(torch.int16), value
        on_torch = round_to_storage_torch(torch.from_numpy(values), dtype)
        assert on_torch.numpy().view(np.uint16).tobytes() == rounded.view(np.uint16).tobytes()


def test_round_to_storage_keeps_nan_and_overflows_to_infinity():
    values = np.array([np.nan, 1e40, -1e40, 70000.0], dtype=np.float64)
    bf16 = torch.from_numpy(round_to_storage(values, "BF16").view(np.int16)).view(torch.bfloat16)
    assert torch.isnan(bf16[0]) and bf16[1] == float("inf") and bf16[2] == float("-inf")
    f16 = torch.from_numpy(round_to_storage(values, "F16"))
    assert torch.isnan(f16[0]) and f16[3] == float("inf")


def _state_dict_sources(dtype, count=3):
    dicts = [_random_tensors(seed, DTYPES[dtype], shapes=((65, 67), (1000,), (1,))) for seed in range(count)]
    return {i: StateDictSource(d, origin=f"sd{i}") for i, d in enumerate(dicts)}


def _run(runner, tensors, step):
    sink = StateDictSink()
    for item in work_items(tensors, step):
        runner.run(item, sink)
    return {k: v.view(torch.uint8) if v.dtype != torch.bool else v for k, v in sink.state_dict.items()}


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("method,params", [("uniform", {}), ("weighted", {"weights": [0.3, -1.25, 2.0]}),
                                           ("weighted", {"weights": [1e-3, 1.0, 7.0], "normalize": False})])
def test_the_torch_path_gives_the_numpy_path_bytes(dtype, method, params):
    sources = _state_dict_sources(dtype)
    alignment = align(list(sources.values()), [f"sd{i}" for i in sources])
    merger = build_method(method, params)
    indices = list(sources)
    expected = _run(_CpuRunner(merger, sources, indices), alignment.tensors, 1 << 20)
    for step in (7, 4096):
        got = _run(DeviceRunner(merger, sources, indices, "cpu"), alignment.tensors, step)
        assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_a_failing_worker_stops_the_merge_names_the_file_and_leaves_nothing(make_ingredients, tmp_path):
    paths = make_ingredients("llama", 3)
    weights = paths[1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a truncated download
    with pytest.raises(CorruptWeightsError, match="model.safetensors"):
        hf_soup.soup(paths, output_dir=tmp_path / "soup", threads=2)
    assert not (tmp_path / "soup").exists()
    assert not [p for p in tmp_path.iterdir() if ".hf-soup" in p.name]


def test_threads_is_a_recipe_key_and_a_cli_flag(make_ingredients, tmp_path):
    from hf_soup.cli import main

    paths = make_ingredients("gpt2", 2)
    assert main(["merge", "-m", str(paths[0]), "-m", str(paths[1]), "-o", str(tmp_path / "soup"),
                 "--threads", "2", "--quiet"]) == 0
    with pytest.raises(Exception, match="threads"):
        hf_soup.soup(paths, output_dir=tmp_path / "bad", threads=0)
