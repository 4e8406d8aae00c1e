"""SLERP, NuSLERP, DELLA and DELLA-linear streamed in chunks give the bytes of the whole-tensor computation.

SLERP's and NuSLERP's norms and dot products come from a pre-pass over blocks fixed by the
shape; DELLA's MagPrune masks are decided on whole rows (the engine cuts its items at
``row_length``) and its l1 rescale sums come from two pre-passes. The references are the
formulas these methods used when each work item held a whole tensor (``FORMER_*`` below, as
they were written), and each method's ``merge_whole``.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from hf_soup import merge_state_dicts
from hf_soup.engine import chunks as engine_chunks
from hf_soup.engine.chunks import WorkItem, work_items
from hf_soup.engine.rounding import round_to_storage
from hf_soup.methods import della_rows, slerp, streamed_stats, vector_angles
from hf_soup.methods.base import ChunkInfo, MergeContext
from hf_soup.methods.registry import build_method


def former_slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SLERP as a whole-tensor work item computed it (MergeKit's formula, sums over 1 Mi-element blocks)."""
    block = 1 << 20
    blocks = [(x[s : s + block].astype(np.float64)) for x in (a, b) for s in range(0, x.size, block)]
    half = len(blocks) // 2
    norm_a = np.sqrt(sum(float(np.linalg.norm(x)) ** 2 for x in blocks[:half]))
    norm_b = np.sqrt(sum(float(np.linalg.norm(x)) ** 2 for x in blocks[half:]))
    norm_a, norm_b = (norm_a if norm_a > 1e-8 else 1.0), (norm_b if norm_b > 1e-8 else 1.0)
    dot = sum(float(((x / norm_a) * (y / norm_b)).sum()) for x, y in zip(blocks[:half], blocks[half:]))
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > 0.9995:
        coef_a, coef_b = 1 - t, t
    else:
        theta = np.arccos(dot)
        coef_a, coef_b = np.sin((1 - t) * theta) / np.sin(theta), np.sin(t * theta) / np.sin(theta)
    return np.concatenate([x * coef_a + y * coef_b for x, y in zip(blocks[:half], blocks[half:])] or [np.empty(0)])


def former_nuslerp(t: float, shape: tuple[int, ...], flatten: bool, row_wise: bool, chunks) -> np.ndarray:
    """NuSLERP as a whole-tensor work item computed it (chunks: [base,] a, b)."""
    def rows(t, v0, v1):
        def unit(x):
            return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-7)
        cos = np.clip(np.einsum("ij,ij->i", unit(v0), unit(v1))[:, None], -1, 1)
        collinear = (1 - cos * cos) <= 1e-16
        theta = np.arccos(np.where(collinear, 0.0, cos))
        with np.errstate(divide="ignore", invalid="ignore"):
            result = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)
        return np.where(collinear, (1 - t) * v0 + t * v1, result)

    shape = shape or (chunks[0].size,)
    base = chunks[0] if len(chunks) == 3 else None
    a, b = (c.astype(np.float64) for c in chunks[-2:])
    if base is not None:
        a -= base
        b -= base
    if flatten:
        merged = rows(t, a.reshape(1, -1), b.reshape(1, -1)).reshape(-1)
    else:
        a, b = a.reshape(shape), b.reshape(shape)
        if row_wise and len(shape) >= 2:
            a, b = np.swapaxes(a, 0, -1), np.swapaxes(b, 0, -1)
        merged = rows(t, a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])).reshape(a.shape)
        if row_wise and len(shape) >= 2:
            merged = np.swapaxes(merged, 0, -1)
        merged = np.ascontiguousarray(merged).reshape(-1)
    return merged if base is None else base + merged


def _inputs(kind: str, size: int, count: int, seed: int) -> list[np.ndarray]:
    """A base and ``count - 1`` versions: smooth noise, values on a coarse grid (many ties), or one unchanged."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(size).astype(np.float32)
    if kind == "ties-heavy":
        others = [base + rng.integers(-3, 4, size).astype(np.float32) / 8 for _ in range(count - 1)]
    elif kind == "unchanged":
        others = [base.copy()] + [base + rng.standard_normal(size).astype(np.float32) for _ in range(count - 2)]
    else:
        others = [base + (rng.standard_normal(size) * np.exp(rng.standard_normal(size))).astype(np.float32)
                  for _ in range(count - 1)]
    return [base, *others]


def _streamed(method, info: ChunkInfo, chunks, rng, rows: int = 1, longest: int = 900) -> np.ndarray:
    """Pre-pass on copies of the chunks read, then merges of uneven chunks (whole multiples of ``rows``)."""
    method.prepare_tensor(info, lambda start, stop: [c[start:stop].copy() for c in chunks])
    out, start = [], 0
    while start < info.stop:
        stop = min(info.stop, start + rows * int(rng.integers(1, max(2, longest // rows + 1))))
        out.append(method.merge(ChunkInfo(info.key, info.shape, start, stop), [c[start:stop] for c in chunks]))
        start = stop
    return np.concatenate(out) if out else np.empty(0)


def _same(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.dtype == expected.dtype and np.array_equal(got.view(np.uint64), expected.view(np.uint64))


SHAPES = [(37, 211), (3001,), (1, 5), (300, 1), (5, 6, 7), (0,), (4, 0), ()]


@pytest.mark.parametrize("name", ["della", "della_linear"])
@pytest.mark.parametrize("params", [{"density": [0.3, 0.5, 1.0], "epsilon": 0.1, "weights": [1.0, 0.5, 2.0]},
                                    {"density": 0.6, "epsilon": [0.05, 0.2, 0.3], "rescale": False},
                                    {"density": 0.5, "epsilon": 0.4, "lambda": 0.7, "normalize": True}])
@pytest.mark.parametrize("kind", ["smooth", "ties-heavy", "unchanged"])
@pytest.mark.parametrize("mask_cache", [32 << 20, 0])  # the second rescale pass reuses the masks, or decides them again
def test_della_on_whole_rows_has_the_bytes_of_the_whole_tensor_merge(name, params, kind, mask_cache, monkeypatch):
    monkeypatch.setattr(streamed_stats, "LEAF", 512)  # the l1 sums' tree cut into many subtrees
    monkeypatch.setattr(della_rows, "PREPASS_CHUNK", 1000)  # tensors span many pre-pass chunks
    monkeypatch.setattr(della_rows, "MASK_CACHE_BYTES", mask_cache)
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        method = build_method(name, params)
        method.setup(MergeContext(3, ["a", "b", "c"], seed=11, base="base"))
        size = int(np.prod(shape))
        chunks = _inputs(kind, size, 4, seed=size)
        info = ChunkInfo("model.w", shape, 0, size)
        expected = method.merge_whole(info, chunks)
        got = _streamed(method, info, chunks, rng, rows=method.row_length(shape))
        assert _same(got, expected), shape


def test_della_refuses_a_chunk_of_partial_rows():
    method = build_method("della", {"density": 0.5, "epsilon": 0.1})
    method.setup(MergeContext(2, ["a", "b"], seed=0, base="base"))
    chunks = _inputs("smooth", 40, 3, seed=0)
    info = ChunkInfo("w", (4, 10), 0, 40)
    method.prepare_tensor(info, lambda start, stop: [c[start:stop] for c in chunks])
    with pytest.raises(AssertionError, match="not whole rows of 10"):
        method.merge(ChunkInfo("w", (4, 10), 5, 20), [c[5:20] for c in chunks])


@pytest.mark.parametrize("size", [0, 1, 7, 5000, 12_345])
@pytest.mark.parametrize("kind", ["smooth", "unchanged"])
def test_slerp_streamed_has_the_bytes_of_the_former_whole_tensor_slerp(size, kind, monkeypatch):
    rng = np.random.default_rng(size)
    a, b = _inputs(kind, size, 2, seed=size)
    for t in (0.3, 0.8):
        expected = former_slerp(t, a, b)
        assert _same(slerp.slerp(t, a, b), expected)
        method = build_method("slerp", {"t": t})
        method.setup(MergeContext(2, ["a", "b"]))
        with monkeypatch.context() as patch:
            patch.setattr(slerp, "_BLOCK", 1000)  # both sums over many blocks, in two passes
            streamed = _streamed(method, ChunkInfo("w", (size,), 0, size), [a, b], rng)
            small_blocks = slerp.slerp(t, a, b)
        assert _same(streamed, small_blocks)
        assert _same(_streamed(method, ChunkInfo("w", (size,), 0, size), [a, b], rng), expected)


NUSLERP_MODES = [{}, {"flatten": False}, {"flatten": False, "row_wise": True}]


@pytest.mark.parametrize("mode", NUSLERP_MODES)
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_streamed_has_the_bytes_of_the_former_whole_tensor_nuslerp(mode, with_base):
    """Vectors of at most ``vector_angles.BLOCK`` elements: each row's cosine from whole rows, as before;
    a matrix's columns: the running sums continue down the matrix block by block, as before. (Columns of
    a tensor of 3 or more dimensions were summed in another order: they were copied to rows first.)"""
    rng = np.random.default_rng(2)
    long = [(2100, 600), (3, 700_001)]  # several blocks of whole rows (for rows and columns)
    columns = mode.get("row_wise", False)
    for shape in [s for s in SHAPES[:5] if not (columns and len(s) > 2)] + (long if mode else []):
        size = int(np.prod(shape))
        chunks = _inputs("smooth", size, 3, seed=size)
        if not with_base:
            chunks = chunks[1:]
            chunks[1][: size // 3] = chunks[0][: size // 3]  # collinear rows: lerped
        params = {"weights": [0.3, 0.9], **mode}
        method = build_method("nuslerp", params)
        method.setup(MergeContext(2, ["a", "b"], base="base" if with_base else None))
        expected = former_nuslerp(0.75, shape, method.params.flatten, method.params.row_wise, chunks)
        info = ChunkInfo("w", shape, 0, size)
        assert _same(_streamed(method, info, chunks, rng, longest=300_000), expected), shape
        rows = method.row_length(shape)  # the engine's items: whole rows, factors broadcast per row
        assert _same(_streamed(method, info, chunks, rng, rows=rows, longest=max(300_000, rows)), expected), shape


@pytest.mark.parametrize("mode", NUSLERP_MODES)
def test_nuslerp_over_long_vectors_does_not_depend_on_the_chunks(mode, monkeypatch):
    """Vectors longer than a block: norms, then dot products, summed per shape-fixed block in two passes."""
    monkeypatch.setattr(vector_angles, "BLOCK", 500)
    rng = np.random.default_rng(3)
    for shape in [(37, 211), (3001,), (5, 6, 7), (1200, 2)]:
        size = int(np.prod(shape))
        chunks = _inputs("ties-heavy", size, 3, seed=size)
        method = build_method("nuslerp", {"weights": [1.0, 2.0], **mode})
        method.setup(MergeContext(2, ["a", "b"], base="base"))
        info = ChunkInfo("w", shape, 0, size)
        expected = method.merge_whole(info, chunks)
        assert _same(_streamed(method, info, chunks, rng), expected), shape
        former = former_nuslerp(2 / 3, shape, method.params.flatten, method.params.row_wise, chunks)
        assert np.allclose(expected, former, rtol=1e-12, atol=1e-12)


def test_work_items_hold_whole_rows():
    from hf_soup.align import align
    from hf_soup.io.torch_source import StateDictSource

    source = StateDictSource({"w": torch.zeros(7, 300), "long": torch.zeros(2, 5000), "v": torch.zeros(10)},
                             origin="sd")
    tensors = align([source], ["sd"]).tensors
    items = list(work_items(tensors, 1000, row_length=lambda shape: shape[-1]))
    spans = {t.key: [(i.start, i.stop) for i in items if i.tensor.key == t.key] for t in tensors}
    assert spans["w"] == [(0, 900), (900, 1800), (1800, 2100)]
    assert spans["long"] == [(0, 5000), (5000, 10000)]  # a row longer than the step: one row per item
    assert spans["v"] == [(0, 10)]
    assert all(isinstance(item, WorkItem) for item in items)


def _state_dicts(count: int, shapes: dict[str, tuple[int, ...]]) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(9)
    base = {k: np.asarray(rng.standard_normal(s), dtype=np.float32) for k, s in shapes.items()}
    out = [{k: torch.from_numpy(v) for k, v in base.items()}]
    for _ in range(count):
        out.append({k: torch.from_numpy(np.asarray(v + np.float32(0.1) * rng.standard_normal(v.shape), np.float32))
                    for k, v in base.items()})
    return out


@pytest.mark.parametrize("name, params", [("della", {"density": 0.4, "epsilon": 0.2}),
                                          ("della_linear", {"density": [0.5, 0.3, 0.7], "epsilon": 0.1}),
                                          ("slerp", {"t": 0.4}), ("nuslerp", {"weights": [0.2, 0.5]}),
                                          ("nuslerp", {"flatten": False}),
                                          ("nuslerp", {"flatten": False, "row_wise": True})])
def test_the_engine_writes_the_whole_tensor_bytes_with_any_items_and_threads(name, params, monkeypatch):
    """Tensors larger than one item and one block, merged on 1 and 3 threads: the whole-tensor result, rounded once."""
    two = name in ("slerp", "nuslerp")
    shapes = {"embed": (700, 96), "proj": (96, 130), "norm": (96,), "scalar": ()}
    dicts = _state_dicts(2 if two else 3, shapes)
    base, inputs = (None, dicts[1:3]) if two else (dicts[0], dicts[1:])
    reference = build_method(name, params)
    reference.setup(MergeContext(len(inputs), [], seed=4, base=None if base is None else "base"))
    expected = {}
    for key, shape in shapes.items():
        chunks = ([base[key].numpy().reshape(-1)] if base is not None else []) + [d[key].numpy().reshape(-1)
                                                                                 for d in inputs]
        info = ChunkInfo(key, shape, 0, chunks[0].size)
        expected[key] = round_to_storage(reference.merge_whole(info, chunks), "F32")
    monkeypatch.setattr(engine_chunks, "MAX_CHUNK", 5000)  # items of a few thousand elements ...
    monkeypatch.setattr(engine_chunks, "MIN_CHUNK", 1000)
    monkeypatch.setattr(importlib.import_module("hf_soup.engine.execute"), "BLOCK", 700)  # ... merged in blocks of a few hundred
    for threads in (1, 3):
        merged = merge_state_dicts(inputs, name, base_state_dict=base, threads=threads, seed=4, **params)
        for key, values in expected.items():
            assert np.array_equal(merged[key].numpy().reshape(-1), values), (name, threads, key)
