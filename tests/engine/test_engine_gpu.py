"""The engine on a CUDA GPU gives the CPU's bytes (skipped where no GPU is visible)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import hf_soup
from hf_soup.align import align
from hf_soup.engine.device import DeviceRunner, cuda_available
from hf_soup.engine.execute import _CpuRunner
from hf_soup.methods.registry import build_method

from test_engine import _checkpoint, _random_tensors, _run, _state_dict_sources

pytestmark = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16"])
@pytest.mark.parametrize("method,params", [("uniform", {}), ("weighted", {"weights": [0.3, -1.25, 2.0]})])
def test_the_cuda_path_gives_the_numpy_path_bytes(dtype, method, params):
    sources = _state_dict_sources(dtype)
    alignment = align(list(sources.values()), [f"sd{i}" for i in sources])
    merger = build_method(method, params)
    expected = _run(_CpuRunner(merger, sources, list(sources)), alignment.tensors, 1 << 20)
    for step in (7, 1 << 16):
        got = _run(DeviceRunner(merger, sources, list(sources), "cuda"), alignment.tensors, step)
        assert all(torch.equal(got[k], v) for k, v in expected.items())


@pytest.mark.parametrize("method,params", [
    ("uniform", {}),
    ("weighted", {"weights": [1, 2, 3]}),
    ("ame", {"optimizer": "adam", "lr": 0.001}),
    ("ame", {"optimizer": "sgd", "lr": 1.0, "momentum": 0.9}),
])
def test_a_soup_on_cuda_has_the_cpu_bytes(tmp_path, method, params):
    paths = [_checkpoint(tmp_path / f"in{i}", _random_tensors(i, torch.bfloat16)) for i in range(3)]
    outputs = {}
    for device, threads in (("cpu", 1), ("cpu", 3), ("cuda", 4)):
        out = hf_soup.soup(paths, method=method, output_dir=tmp_path / f"{device}-{threads}", device=device,
                           threads=threads, **params).output_dir
        outputs[(device, threads)] = load_file(str(out / "model.safetensors"))
    reference = outputs[("cpu", 1)]
    for name, soup in outputs.items():
        assert all(torch.equal(soup[k].view(torch.int16), v.view(torch.int16)) for k, v in reference.items()), name
