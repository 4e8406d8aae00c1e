"""Base-relative methods streamed in chunks give the bytes of the whole-tensor computation.

The statistics of a tensor (top-k bounds, l1 norms, DARE masks, Model Stock's angles) come
from a pre-pass over chunks; the merge is then elementwise. These tests compare both with
the whole-tensor path (``_merge_whole`` / ``merge_whole``) on data with many ties, all-equal
task vectors and selections that need every histogram level.
"""

from __future__ import annotations

import numpy as np
import pytest

from hf_soup.methods import streamed_stats, task_vectors
from hf_soup.methods.base import ChunkInfo, MergeContext
from hf_soup.methods.registry import build_method
from hf_soup.methods.sparsify import rank_mask

CASES = [
    ("ties", {"density": 0.3}), ("ties", {"density": 0.5, "rescale": True}), ("dare_ties", {"density": 0.4}),
    ("dare_linear", {"density": 0.7}), ("breadcrumbs", {"density": 0.6, "gamma": 0.05}),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1, "rescale": True}),
    ("ties", {"density": 0.6, "weights": [0.5, 1.0, -0.25]}),
    ("dare_ties", {"density": 0.5, "normalize": True, "weights": [1.0, 2.0, 0.0]}),
    ("task_arithmetic", {"weights": [0.5, 1.0, -0.25]}), ("model_stock", {}), ("model_stock", {"filter_wise": True}),
]


def _inputs(kind: str, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """A base and 3 fine-tunes: ``bf16``-like values (many equal magnitudes), one unchanged, or smooth noise."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    base = rng.standard_normal(size).astype(np.float32)
    if kind == "ties-heavy":  # values on a coarse grid: magnitudes repeat thousands of times
        tunes = [base + rng.integers(-3, 4, size).astype(np.float32) / 8 for _ in range(3)]
    elif kind == "unchanged":  # one fine-tune equals the base: its magnitudes are all 0
        tunes = [base.copy(), base + rng.standard_normal(size).astype(np.float32),
                 base - rng.standard_normal(size).astype(np.float32) / 3]
    else:
        tunes = [base + (rng.standard_normal(size) * np.exp(rng.standard_normal(size))).astype(np.float32)
                 for _ in range(3)]
    return [base, *tunes]


def _streamed(method, info: ChunkInfo, chunks: list[np.ndarray], step: int, rng) -> np.ndarray:
    method.prepare_tensor(info, lambda start, stop: [c[start:stop].copy() for c in chunks])
    out, start = [], 0
    while start < info.stop:  # uneven chunks, as an engine with any buffer size would cut them
        stop = min(info.stop, start + int(rng.integers(1, step)))
        out.append(method.merge(ChunkInfo(info.key, info.shape, start, stop), [c[start:stop] for c in chunks]))
        start = stop
    return np.concatenate(out) if out else np.empty(0)


def _whole(method, info: ChunkInfo, chunks: list[np.ndarray]) -> np.ndarray:
    if hasattr(method, "merge_whole"):
        return method.merge_whole(info, chunks)
    return method._merge_whole(info, chunks)


@pytest.mark.parametrize("name, params", CASES)
@pytest.mark.parametrize("kind", ["smooth", "ties-heavy", "unchanged"])
def test_streamed_merge_has_the_bytes_of_the_whole_tensor_merge(name, params, kind, monkeypatch):
    monkeypatch.setattr(streamed_stats, "COLLECT", 64)  # gather late: every histogram level runs
    monkeypatch.setattr(streamed_stats, "LEAF", 512)  # numpy's summation tree cut into many subtrees
    monkeypatch.setattr(task_vectors, "_PREPASS_CHUNK", 1000)
    rng = np.random.default_rng(7)
    for shape in [(37, 211), (3001,), (1, 5)]:
        method = build_method(name, params)
        method.setup(MergeContext(3, ["a", "b", "c"], seed=11, base="base"))
        chunks = _inputs(kind, shape, seed=len(shape))
        info = ChunkInfo("model.w", shape, 0, int(np.prod(shape)))
        expected = _whole(method, info, chunks)
        got = _streamed(method, info, chunks, step=900, rng=rng)
        assert got.dtype == expected.dtype and np.array_equal(got.view(np.uint64), expected.view(np.uint64)), shape


def test_rank_selection_equals_a_stable_sort_in_every_pass_mode():
    rng = np.random.default_rng(3)
    for trial in range(200):
        size = int(rng.integers(1, 3000))
        values = [np.abs(rng.standard_normal(size)), np.zeros(size),
                  np.abs(rng.integers(0, 5, size).astype(np.float64))][trial % 3]
        rank, descending = int(rng.integers(0, size)), bool(trial % 2)
        selection = streamed_stats.RankSelection(size, rank, descending, collect=int(rng.integers(1, 100)))
        step = int(rng.integers(1, 500))
        while not selection.done:
            selection.begin_pass()
            for start in range(0, size, step):
                selection.observe(start, values[start : start + step])
            selection.end_pass()
        order = np.lexsort((np.arange(size), -values if descending else values))
        assert selection.result == (values[order[rank]], order[rank])
        mask = np.concatenate([streamed_stats.first_ranked(values[s : s + step], s, selection.result, descending)
                               for s in range(0, size, step)])
        assert np.array_equal(mask, rank_mask(-values if descending else values, 0, rank + 1))


@pytest.mark.parametrize("count", [0, 1, 7, 128, 129, 1000, 65_537, 2_000_003])
@pytest.mark.parametrize("leaf", [None, 1 << 12])
def test_pairwise_sum_of_chunks_is_the_whole_arrays_sum(count, leaf):
    rng = np.random.default_rng(count)
    values = rng.standard_normal(count) * np.exp(4 * rng.standard_normal(count))
    total = streamed_stats.PairwiseSum(count, leaf=leaf)
    start = 0
    while start < count:
        stop = start + int(rng.integers(1, 50_000))
        total.add(values[start:stop])
        start = stop
    if leaf is None:  # the whole-tensor path's order (sparsify.l1_factor), on any numpy
        assert total.result() == streamed_stats.pairwise_total(values)
    if count <= 65_537:  # numpy's own order too (numpy 2.0 groups arrays of millions differently)
        assert total.result() == float(np.sum(values))


@pytest.mark.parametrize("name, params", [case for case in CASES if case[0] in ("ties", "breadcrumbs", "breadcrumbs_ties")])
@pytest.mark.parametrize("kind", ["smooth", "ties-heavy", "unchanged"])
@pytest.mark.parametrize("spread, cap", [(3.0, 100), (0.0, 100), (3.0, 5000), (50.0, 2)])
def test_one_pass_selection_from_a_sample_has_the_bytes_of_the_whole_tensor_merge(name, params, kind, spread, cap,
                                                                                   monkeypatch):
    """Bands guessed from a sample: good ones, missed ones (spread 0), and ones with too much inside (tiny cap)."""
    monkeypatch.setattr(task_vectors, "_SPECULATE_FROM", 64)
    monkeypatch.setattr(task_vectors, "_SAMPLE_RUN", 8)
    monkeypatch.setattr(task_vectors, "_SPREAD", spread)
    monkeypatch.setattr(task_vectors, "_BAND_CAP", cap)
    monkeypatch.setattr(task_vectors, "_BAND_MIN", 1)
    monkeypatch.setattr(streamed_stats, "COLLECT", 64)
    monkeypatch.setattr(task_vectors, "_PREPASS_CHUNK", 700)
    rng = np.random.default_rng(5)
    for shape in [(37, 211), (3001,), (1, 100)]:
        method = build_method(name, params)
        method.setup(MergeContext(3, ["a", "b", "c"], seed=11, base="base"))
        chunks = _inputs(kind, shape, seed=len(shape) + 3)
        info = ChunkInfo("model.w", shape, 0, int(np.prod(shape)))
        expected = _whole(method, info, chunks)
        got = _streamed(method, info, chunks, step=900, rng=rng)
        assert np.array_equal(got.view(np.uint64), expected.view(np.uint64)), shape


def test_band_selection_equals_a_stable_sort_or_says_it_failed():
    rng = np.random.default_rng(4)
    solved = failed = 0
    for trial in range(300):
        size = int(rng.integers(1, 3000))
        values = [np.abs(rng.standard_normal(size)), np.zeros(size),
                  np.abs(rng.integers(0, 5, size).astype(np.float64))][trial % 3]
        rank, descending = int(rng.integers(0, size)), bool(trial % 2)
        order = np.lexsort((np.arange(size), -values if descending else values))
        ends = sorted(values[rng.integers(0, size, 2)], reverse=descending)  # a band, right or wrong
        selection = streamed_stats.BandSelection(size, rank, descending, ends[0], ends[1],
                                                 cap=int(rng.integers(1, 2 * size)))
        step = int(rng.integers(1, 500))
        for start in range(0, size, step):
            selection.observe(start, values[start : start + step])
        selection.end_pass()
        if selection.pending_chunk is not None:
            start, stop, _ = selection.pending_chunk
            selection.locate(values[start:stop])
        if selection.failed:
            failed += 1
            continue
        solved += 1
        assert selection.result == (values[order[rank]], order[rank])
    assert solved > 50 and failed > 50
