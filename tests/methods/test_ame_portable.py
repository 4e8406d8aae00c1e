"""AME's default (portable) arithmetic: a float64 textbook Algorithm 1, bit for bit, on any backend.

The references below are written independently of the implementation, as plain numpy
float64 expressions (one textbook line each). Every operation in them is correctly
rounded, so the method must reproduce them exactly, whatever the block size, the thread
count, or whether numpy (the host) or torch (a GPU; here torch on the CPU) runs the steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_soup.align import align
from hf_soup.engine import execute
from hf_soup.engine.rounding import round_to_storage
from hf_soup.engine.sinks import StateDictSink
from hf_soup.io.torch_source import StateDictSource
from hf_soup.methods.ame.elementary import NumpyOps, TorchOps
from hf_soup.methods.ame.optim import ELEMENTWISE, optimizer_group, resolve_optimizer
from hf_soup.methods.ame.portable import PortableOptimizer
from hf_soup.methods.base import ChunkInfo, MergeContext
from hf_soup.methods.registry import build_method

SIZES = [1, 63, 1000, 65_537, (1 << 20) + 7]


def _ingredients(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """float32 fine-tunes of one base: most elements close, a few equal (g = 0), some far."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(size).astype(np.float32)
    xs = [(base + 0.01 * (i + 1) * rng.standard_normal(size)).astype(np.float32) for i in range(count)]
    xs[1][: size // 7] = xs[0][: size // 7]  # ties between ingredients
    return xs


def _steps(count: int, epochs: int, batch_size: int, lr: float, schedule: str) -> list[tuple[tuple[int, ...], float]]:
    """(batch, rate) of each step: given order, no shuffle, rates lr·(1/t) or lr."""
    steps = []
    for _ in range(epochs):
        for start in range(0, count, batch_size):
            t = len(steps) + 1
            steps.append((tuple(range(start, min(count, start + batch_size))), lr * (1.0 / t) if schedule == "harmonic" else lr))
    return steps


def _pseudogradient(w, xs, batch, zetas):
    g = None
    for j in batch:
        d = w - xs[j]
        if zetas[j] != 1.0:
            d = d * zetas[j]
        g = d if g is None else g + d
    return g / (len(xs) * len(batch))


def reference_sgd(xs32, *, lr, epochs=1, batch_size=1, schedule="harmonic", momentum=0.0, dampening=0.0,
                  nesterov=False, weight_decay=0.0, adaptive=True, zetas=None):
    """Algorithm 1 with SGD (torch's documented update), pivot: the uniform soup."""
    xs = [x.astype(np.float64) for x in xs32]
    zetas = zetas or [1.0] * len(xs)
    w = xs[0]
    for x in xs[1:]:
        w = w + x
    w = w / len(xs)
    pivot, buf = w, None
    for t, (batch, rate) in enumerate(_steps(len(xs), epochs, batch_size, lr, schedule), start=1):
        g = _pseudogradient(w if adaptive else pivot, xs, batch, zetas)
        if weight_decay:
            g = g + weight_decay * w
        if momentum:
            buf = g.copy() if t == 1 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        w = w - rate * g
    return w


def reference_adam(xs32, *, lr, epochs=1, batch_size=1, schedule="harmonic", betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.0, decoupled=False, amsgrad=False, adaptive=True, zetas=None):
    """Algorithm 1 with Adam / AdamW (Kingma & Ba, as torch documents it), pivot: the uniform soup."""
    xs = [x.astype(np.float64) for x in xs32]
    zetas = zetas or [1.0] * len(xs)
    beta1, beta2 = betas
    w = xs[0]
    for x in xs[1:]:
        w = w + x
    w = w / len(xs)
    pivot = w
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, (batch, rate) in enumerate(_steps(len(xs), epochs, batch_size, lr, schedule), start=1):
        g = _pseudogradient(w if adaptive else pivot, xs, batch, zetas)
        if weight_decay and decoupled:
            w = w * (1 - rate * weight_decay)
        elif weight_decay:
            g = g + weight_decay * w
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g * g)
        m_hat = m / (1 - beta1 ** t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - beta2 ** t)
        else:
            v_hat = v / (1 - beta2 ** t)
        w = w - rate * (m_hat / (np.sqrt(v_hat) + eps))
    return w


ADAM_CASES = [
    dict(optimizer="adam", lr=1e-3),
    dict(optimizer="adam", lr=0.01, betas=[0.8, 0.99], epochs=3, batch_size=2, weight_decay=0.1, amsgrad=True),
    dict(optimizer="adamw", lr=0.02, weight_decay=0.05, lr_schedule="constant", adaptive_pivot=False),
    dict(optimizer="adam", lr=5e-3, epochs=2, amplification=[1.0, 2.0, 0.5, 1.5], batch_size=3),
]
SGD_CASES = [
    dict(optimizer="sgd", lr=1.0),
    dict(optimizer="sgd", lr=0.5, momentum=0.9, epochs=2, batch_size=3),
    dict(optimizer="sgd", lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.01, epochs=3),
    dict(optimizer="sgd", lr=0.8, momentum=0.5, dampening=0.2, lr_schedule="constant", adaptive_pivot=False,
         amplification=[1.0, 2.0, 0.5, 1.5], batch_size=2),
]


def _reference(options: dict, xs: list[np.ndarray]) -> np.ndarray:
    common = dict(lr=options["lr"], epochs=options.get("epochs", 1), batch_size=options.get("batch_size", 1),
                  schedule=options.get("lr_schedule", "harmonic"), adaptive=options.get("adaptive_pivot", True),
                  zetas=options.get("amplification"), weight_decay=options.get("weight_decay", 0.0))
    if options["optimizer"] == "sgd":
        return reference_sgd(xs, momentum=options.get("momentum", 0.0), dampening=options.get("dampening", 0.0),
                             nesterov=options.get("nesterov", False), **common)
    return reference_adam(xs, betas=tuple(options.get("betas", (0.9, 0.999))), amsgrad=options.get("amsgrad", False),
                          decoupled=options["optimizer"] == "adamw", **common)


def _method(options: dict, count: int = 4):
    method = build_method("ame", options)
    method.setup(MergeContext(count, [f"m{i}" for i in range(count)]))
    return method


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("options", ADAM_CASES + SGD_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_default_path_is_the_float64_textbook_algorithm_bit_for_bit(options, size):
    if size > 100_000 and options not in (ADAM_CASES[0], ADAM_CASES[1], SGD_CASES[1]):
        pytest.skip("the large size runs for a few cases only")
    xs = _ingredients(4, size)
    method = _method(options)
    assert method.report()["implementation"] == "portable"
    got = method.merge(ChunkInfo("w", (size,), 0, size), xs)
    expected = _reference(options, xs)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    for dtype in ("F32", "BF16", "F16"):  # hence the same bytes once rounded to any output dtype
        np.testing.assert_array_equal(round_to_storage(got, dtype), round_to_storage(expected, dtype))
    if options is ADAM_CASES[0]:  # the reference is not trivially satisfied: float32 steps differ
        fused = _method({**options, "fused": True}).merge(ChunkInfo("w", (size,), 0, size), xs)
        assert size < 1000 or not np.array_equal(fused, expected.astype(np.float32))


def _engine_bytes(options: dict, xs: list[np.ndarray], threads: int, buffer_bytes: int, dtype=torch.bfloat16) -> bytes:
    sds = [{"w": torch.from_numpy(x).to(dtype), "b": torch.from_numpy(x[:37]).to(dtype)} for x in xs]
    sources = {i: StateDictSource(sd) for i, sd in enumerate(sds)}
    alignment = align(list(sources.values()), [f"m{i}" for i in sources])
    method = build_method("ame", options)
    method.setup(MergeContext(len(xs), [f"m{i}" for i in sources], alignment=alignment))
    sink = StateDictSink()
    execute(method, alignment.tensors, sources, list(sources), lambda _: sink, buffer_bytes=buffer_bytes,
            threads=threads)
    return b"".join(sink.state_dict[k].view(torch.int16).numpy().tobytes() for k in ("w", "b"))


@pytest.mark.parametrize("options", [ADAM_CASES[1], SGD_CASES[2]], ids=["adam", "sgd"])
def test_bytes_do_not_depend_on_threads_or_chunks(options):
    """Through the engine: 1 or 3 threads, 64 Ki or 1 Mi element items, equal to the reference once rounded."""
    xs = _ingredients(4, (1 << 20) + 7, seed=3)
    runs = {(threads, budget): _engine_bytes(options, xs, threads, budget)
            for threads, budget in ((1, 1 << 30), (3, 1 << 20), (2, 1 << 24))}
    assert len(set(runs.values())) == 1
    expected = _reference(options, [x.astype(np.float32) for x in
                                    (torch.from_numpy(x).to(torch.bfloat16).float().numpy() for x in xs)])
    head = round_to_storage(expected, "BF16").tobytes()
    assert next(iter(runs.values())).startswith(head)


def test_engine_threads_are_used_and_the_fused_path_keeps_one():
    assert _method(dict(optimizer="adam")).max_threads is None
    assert _method(dict(optimizer="adam", num_threads=2)).max_threads == 2
    assert _method(dict(optimizer="adam", fused=True)).max_threads == 1


# -- every optimizer: torch ops give numpy's bytes; the rules follow torch's optimizers ------

OPTIMIZER_CASES = [
    ("sgd", {}), ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)),
    ("sgd", dict(momentum=0.5, dampening=0.1)),
    ("adam", {}), ("adam", dict(betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("adam", dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("adamw", {}), ("adamw", dict(weight_decay=0.1, amsgrad=True)),
    ("adagrad", {}), ("adagrad", dict(lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("adadelta", {}), ("adadelta", dict(rho=0.5, weight_decay=0.1, eps=1e-4)),
    ("rmsprop", {}), ("rmsprop", dict(centered=True)), ("rmsprop", dict(momentum=0.9, alpha=0.9)),
    ("rmsprop", dict(centered=True, momentum=0.9, weight_decay=0.1)),
    ("adamax", {}), ("adamax", dict(betas=(0.8, 0.99), weight_decay=0.1)),
    ("nadam", {}), ("nadam", dict(weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01)),
    ("radam", {}), ("radam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("asgd", {}), ("asgd", dict(t0=2, lambd=0.01, alpha=0.5, weight_decay=0.1)),
    ("rprop", {}), ("rprop", dict(etas=(0.3, 1.5), step_sizes=(1e-4, 1.0))),
]
_IDS = [f"{name}-{','.join(f'{k}={v}' for k, v in kwargs.items()) or 'defaults'}" for name, kwargs in OPTIMIZER_CASES]


def test_every_optimizer_has_a_portable_step():
    from hf_soup.methods.ame.portable import STEPS

    assert set(STEPS) == set(ELEMENTWISE)
    assert {name for name, _ in OPTIMIZER_CASES} == set(ELEMENTWISE)


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES, ids=_IDS)
def test_the_rule_is_torchs_optimizer_up_to_float64_rounding(name, kwargs):
    """Six steps at changing rates, float64: the portable step follows ``torch.optim.X.step()``."""
    g = torch.Generator().manual_seed(5)
    start = torch.randn(1000, generator=g, dtype=torch.float64)
    gradients = [torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(6)]
    gradients[3] = -gradients[2]  # a sign flip (Rprop's and AMSGrad's branches)
    rates = [0.1, 0.05, 0.3, 0.02, 0.2, 0.01]
    weights = torch.nn.Parameter(start.clone())
    ours = PortableOptimizer(name, optimizer_group(name, 1.0, kwargs), NumpyOps(), 1000)
    values = start.numpy().copy()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch keeps NAdam's μ product and ASGD's η in the default dtype
    try:
        reference = resolve_optimizer(name)([weights], lr=1.0, foreach=False, **kwargs)
        for gradient, rate in zip(gradients, rates):
            weights.grad = gradient.clone()
            reference.param_groups[0]["lr"] = rate
            reference.step()
            ours.step(values, gradient.numpy().copy(), rate)
            np.testing.assert_allclose(values, weights.detach().numpy(), rtol=1e-12, atol=1e-14)
    finally:
        torch.set_default_dtype(previous)
    assert not np.array_equal(values, start.numpy())


@pytest.mark.parametrize("name, kwargs", OPTIMIZER_CASES, ids=_IDS)
def test_torch_ops_give_the_numpy_bytes(name, kwargs):
    """What a GPU runs (torch), here on the CPU: the same float64 bits as numpy, through a whole merge."""
    options = dict(optimizer=name, epochs=2, batch_size=2, shuffle=True, seed=4, **kwargs)
    method = _method(options, count=3)
    xs = _ingredients(3, 70_001, seed=1)
    info = ChunkInfo("w", (70_001,), 0, 70_001)
    on_numpy = method._merge_portable(info, xs, NumpyOps())
    on_torch = method._merge_portable(info, xs, TorchOps("cpu"))
    assert on_torch.dtype == np.float64
    np.testing.assert_array_equal(on_torch, on_numpy)


def test_a_state_dict_pivot_and_a_fixed_pivot_stream_identically():
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(100_003, generator=g).numpy() for _ in range(3)]
    pivot = torch.randn(100_003, generator=g)
    options = dict(optimizer="adam", lr=0.01, pivot={"w": pivot}, adaptive_pivot=False, epochs=2)
    method = _method(options, count=3)
    method.setup(MergeContext(3, ["a", "b", "c"], alignment=align([StateDictSource({"w": torch.from_numpy(x)})
                                                                 for x in xs], ["a", "b", "c"])))
    info = ChunkInfo("w", (100_003,), 0, 100_003)
    whole = method.merge(info, xs)
    parts = np.concatenate([method.merge(ChunkInfo("w", (100_003,), a, b), [x[a:b] for x in xs])
                            for a, b in ((0, 40_000), (40_000, 100_003))])
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(method._merge_portable(info, xs, TorchOps("cpu")), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [ADAM_CASES[1], SGD_CASES[2], dict(optimizer="rmsprop", lr=0.01, centered=True)],
                         ids=["adam", "sgd", "rmsprop"])
def test_the_engines_device_path_gives_the_host_bytes(dtype, options):
    """``merge_torch`` through the engine's GPU runner (here on the CPU): the host runner's bytes."""
    from hf_soup.engine.chunks import work_items
    from hf_soup.engine.device import DeviceRunner
    from hf_soup.engine.execute import _CpuRunner

    g = torch.Generator().manual_seed(9)
    sds = [{"w": torch.randn(301, 257, generator=g).to(dtype), "b": torch.randn(7, generator=g).to(dtype)}
           for _ in range(4)]
    sources = {i: StateDictSource(sd) for i, sd in enumerate(sds)}
    alignment = align(list(sources.values()), [f"m{i}" for i in sources])
    method = build_method("ame", options)
    method.setup(MergeContext(4, [f"m{i}" for i in sources], alignment=alignment))
    results = []
    for runner, step in ((_CpuRunner(method, sources, list(sources)), 1 << 20),
                         (DeviceRunner(method, sources, list(sources), "cpu"), 10_007)):
        sink = StateDictSink()
        for item in work_items(alignment.tensors, step):
            runner.run(item, sink)
        results.append({k: v.view(torch.uint8) for k, v in sink.state_dict.items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in ("w", "b"))
