"""AME on a CUDA GPU gives the CPU's bytes at scale (skipped where no GPU is visible).

The small-tensor checks live in ``test_engine_gpu.py``; these use tensors of
4 Mi elements and more, where torch's own optimizer kernels once differed between the
devices (fused multiply-adds in ``lerp`` / ``addcmul`` / ``addcdiv`` on CUDA).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_soup
from hf_soup.engine.device import cuda_available
from hf_soup.methods.ame.elementary import NumpyOps, TorchOps
from hf_soup.methods.base import ChunkInfo, MergeContext
from hf_soup.methods.registry import build_method

pytestmark = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")

LARGE = (1 << 22) + 11  # > 4 Mi elements, odd


def test_every_elementary_operation_is_correctly_rounded_on_cuda():
    """Each operation the portable steps use, on CUDA, equals numpy's (IEEE, correctly rounded) bit for bit."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(LARGE) * 1e3, rng.random(LARGE) + 1e-3
    host, device = NumpyOps(), TorchOps("cuda")
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    for name, args in [("add", (b,)), ("sub", (b,)), ("mul", (b,)), ("div", (b,)), ("mul", (0.9,)),
                       ("div", (3.0,)), ("add", (1e-8,)), ("sub", (0.1,))]:
        expected = getattr(host, name)(a, *args, np.empty(LARGE))
        device_args = [tb if isinstance(x, np.ndarray) else x for x in args]
        got = getattr(device, name)(ta, *device_args, device.empty(LARGE)).cpu().numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} {args[0] if not isinstance(args[0], np.ndarray) else 'array'}")
    np.testing.assert_array_equal(device.sqrt(tb, device.empty(LARGE)).cpu().numpy(), np.sqrt(b))


@pytest.mark.parametrize("options", [
    dict(optimizer="adam", lr=1e-3),
    dict(optimizer="adamw", lr=0.01, weight_decay=0.1, amsgrad=True, epochs=2, batch_size=2),
    dict(optimizer="sgd", lr=1.0, momentum=0.9),
    dict(optimizer="adagrad", lr=0.01), dict(optimizer="rmsprop", lr=0.01, centered=True, momentum=0.9),
    dict(optimizer="adadelta"), dict(optimizer="adamax"), dict(optimizer="nadam"), dict(optimizer="radam"),
    dict(optimizer="asgd"), dict(optimizer="rprop"),
])
def test_the_portable_merge_on_cuda_has_the_cpu_bits(options):
    rng = np.random.default_rng(1)
    base = rng.standard_normal(LARGE).astype(np.float32)
    xs = [(base + 0.01 * (i + 1) * rng.standard_normal(LARGE)).astype(np.float32) for i in range(4)]
    cpu, gpu = build_method("ame", options), build_method("ame", options)
    cpu.setup(MergeContext(4, list("abcd")))
    gpu.setup(MergeContext(4, list("abcd"), device="cuda"))
    info = ChunkInfo("w", (LARGE,), 0, LARGE)
    np.testing.assert_array_equal(gpu.merge(info, xs), cpu.merge(info, xs))


@pytest.mark.parametrize("params", [{"optimizer": "adam", "lr": 0.001}, {"optimizer": "sgd", "momentum": 0.9}])
def test_an_ame_soup_of_large_bf16_tensors_on_cuda_has_the_cpu_bytes(tmp_path, params):
    paths = []
    for i in range(3):
        gen = torch.Generator().manual_seed(i)
        tensors = {"embed.weight": torch.randn(4096, 1031, generator=gen).to(torch.bfloat16),
                   "norm.weight": torch.randn(1031, generator=gen).to(torch.bfloat16)}
        (tmp_path / f"in{i}").mkdir()
        save_file(tensors, str(tmp_path / f"in{i}" / "model.safetensors"))
        paths.append(tmp_path / f"in{i}")
    outputs = {}
    for device, threads in (("cpu", 1), ("cpu", 3), ("cuda", 4)):
        out = hf_soup.soup(paths, method="ame", output_dir=tmp_path / f"{device}-{threads}", device=device,
                           threads=threads, **params).output_dir
        outputs[(device, threads)] = load_file(str(out / "model.safetensors"))
    reference = outputs[("cpu", 1)]
    for name, soup in outputs.items():
        assert all(torch.equal(soup[k].view(torch.int16), v.view(torch.int16)) for k, v in reference.items()), name
