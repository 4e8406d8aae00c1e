"""A method that declares ``whole_tensor`` (a third-party one: no built-in needs it) sees each tensor in one piece."""

from __future__ import annotations

import importlib

import numpy as np
import torch

from hf_soup import merge_state_dicts
from hf_soup.engine import chunks as engine_chunks
from hf_soup.methods.base import TensorMethod
from hf_soup.methods.registry import register_method


def test_whole_tensor_methods_get_whole_tensors_on_any_items_and_threads(monkeypatch):
    @register_method  # inside the test: the registration is undone after it (tests/conftest.py)
    class CenteredMean(TensorMethod):
        """The ingredients' mean minus its mean over the whole tensor: wrong on any partial chunk."""

        name = "centered-mean-test"
        whole_tensor = True

        def merge(self, info, chunks):
            assert chunks[0].size == int(np.prod(info.shape)), "a whole-tensor method got part of a tensor"
            mean = sum(c.astype(np.float64) for c in chunks) / len(chunks)
            return mean - mean.mean()

    rng = np.random.default_rng(5)
    shapes = {"embed": (400, 64), "proj": (64, 30), "norm": (64,)}
    dicts = [{k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
             for _ in range(3)]
    monkeypatch.setattr(engine_chunks, "MAX_CHUNK", 5000)  # items far smaller than the embedding
    monkeypatch.setattr(engine_chunks, "MIN_CHUNK", 1000)
    monkeypatch.setattr(importlib.import_module("hf_soup.engine.execute"), "BLOCK", 700)
    for threads in (1, 3):
        merged = merge_state_dicts(dicts, CenteredMean.name, threads=threads)
        for key in shapes:
            mean = sum(d[key].numpy().astype(np.float64) for d in dicts) / 3
            expected = (mean - mean.mean()).astype(np.float32)
            assert np.array_equal(merged[key].numpy(), expected), (threads, key)
