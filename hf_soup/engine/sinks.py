"""Where merged tensors go: sharded safetensors files, or an in-memory state dict."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..align import AlignedTensor
from ..io import dtypes
from ..io.shards import INDEX_FILE, Shard, index_json
from ..io.writer import SafetensorsWriter


class Sink(ABC):
    """Receives each output tensor's data, chunk by chunk, in order."""

    @abstractmethod
    def append(self, tensor: AlignedTensor, values: np.ndarray) -> None:
        """Append the next flat chunk of ``tensor`` (storage dtype of ``tensor.dtype``)."""

    def close(self) -> None:
        """Finish writing."""


class ShardSink(Sink):
    """Writes the tensors of ``shard`` into ``directory/shard.filename``."""

    def __init__(self, directory: Path, shard: Shard):
        self.writer = SafetensorsWriter(directory / shard.filename, shard.entries)

    def append(self, tensor: AlignedTensor, values: np.ndarray) -> None:
        self.writer.append(values)

    def close(self) -> None:
        self.writer.close()


def write_index(directory: Path, shards: list[Shard]) -> None:
    """Write ``model.safetensors.index.json`` when the soup has several shards."""
    if len(shards) > 1:
        (directory / INDEX_FILE).write_text(json.dumps(index_json(shards), indent=2) + "\n")


class StateDictSink(Sink):
    """Collects tensors into a dict of torch tensors (``merge_state_dicts``)."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.state_dict: dict[str, Any] = {}
        self._filled: dict[str, int] = {}

    def append(self, tensor: AlignedTensor, values: np.ndarray) -> None:
        torch = self._torch
        if tensor.key not in self.state_dict:
            self.state_dict[tensor.key] = torch.empty(tensor.shape, dtype=getattr(torch, dtypes.TORCH_NAMES[tensor.dtype]))
            self._filled[tensor.key] = 0
        target = self.state_dict[tensor.key].reshape(-1)
        if tensor.dtype == "BF16":
            target = target.view(torch.int16)
            values = values.view(np.int16)
        start = self._filled[tensor.key]
        values = values if values.flags.writeable and values.flags.c_contiguous else np.array(values)
        target[start : start + values.size] = torch.from_numpy(values)
        self._filled[tensor.key] = start + values.size
