"""Split an ordered list of output tensors into safetensors shards by size."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .source import TensorMeta

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"500MiB"`` -> 524_288_000, ints unchanged."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot parse size {size!r}; write it like 500MB, 2GB or 1GiB")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


@dataclass
class Shard:
    """One output file and the tensors it holds, in write order."""

    filename: str
    entries: list[tuple[str, TensorMeta]]

    @property
    def nbytes(self) -> int:
        return sum(meta.nbytes for _, meta in self.entries)


def plan_shards(entries: list[tuple[str, TensorMeta]], max_shard_size: int) -> list[Shard]:
    """Fill shards in order, starting a new one when the next tensor would not fit.

    A tensor larger than ``max_shard_size`` gets a shard of its own.
    """
    groups: list[list[tuple[str, TensorMeta]]] = [[]]
    size = 0
    for key, meta in entries:
        if groups[-1] and size + meta.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append((key, meta))
        size += meta.nbytes
    if len(groups) == 1:
        return [Shard(SINGLE_FILE, groups[0])]
    total = len(groups)
    return [Shard(f"model-{i:05d}-of-{total:05d}.safetensors", group) for i, group in enumerate(groups, 1)]


def index_json(shards: list[Shard]) -> dict:
    """The ``model.safetensors.index.json`` content for ``shards``."""
    weight_map = {key: shard.filename for shard in shards for key, _ in shard.entries}
    return {"metadata": {"total_size": sum(s.nbytes for s in shards)}, "weight_map": dict(sorted(weight_map.items()))}
