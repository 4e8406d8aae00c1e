"""Where merged tensors go: sharded safetensors files, or an in-memory state dict.

Sinks take ``put(tensor, start, values)`` from several threads at once: each call fills
the flat elements ``[start, start + len(values))`` of ``tensor`` at their final place.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..align import AlignedTensor
from ..io import dtypes
from ..io.shards import INDEX_FILE, Shard, index_json
from ..io.writer import SafetensorsWriter


class Sink(ABC):
    """Receives each output tensor's data, in ranges, in any order, from any thread."""

    @abstractmethod
    def put(self, tensor: AlignedTensor, start: int, values: np.ndarray) -> None:
        """Store flat elements ``[start, start + values.size)`` of ``tensor`` (storage dtype of ``tensor.dtype``)."""

    def close(self) -> None:
        """Finish writing."""


class ShardSink(Sink):
    """Writes the tensors of ``shard`` into ``directory/shard.filename``, each range at its offset."""

    def __init__(self, directory: Path, shard: Shard):
        self.writer = SafetensorsWriter(directory / shard.filename, shard.entries)

    def put(self, tensor: AlignedTensor, start: int, values: np.ndarray) -> None:
        self.writer.write_range(tensor.key, start * dtypes.itemsize(tensor.dtype), values)

    def close(self) -> None:
        self.writer.close()


def write_index(directory: Path, shards: list[Shard]) -> None:
    """Write ``model.safetensors.index.json`` when the soup has several shards."""
    if len(shards) > 1:
        (directory / INDEX_FILE).write_text(json.dumps(index_json(shards), indent=2) + "\n")


class StateDictSink(Sink):
    """Collects tensors into a dict of torch tensors (``merge_state_dicts``, candidate soups)."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.state_dict: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _target(self, tensor: AlignedTensor) -> Any:
        torch = self._torch
        with self._lock:
            if tensor.key not in self.state_dict:
                dtype = getattr(torch, dtypes.TORCH_NAMES[tensor.dtype])
                self.state_dict[tensor.key] = torch.empty(tensor.shape, dtype=dtype)
            return self.state_dict[tensor.key]

    def put(self, tensor: AlignedTensor, start: int, values: np.ndarray) -> None:
        torch = self._torch
        target = self._target(tensor).reshape(-1)
        if tensor.dtype == "BF16":
            target = target.view(torch.int16)
            values = values.view(np.int16)
        values = values if values.flags.writeable and values.flags.c_contiguous else np.array(values)
        target[start : start + values.size] = torch.from_numpy(values)
