"""Write a merged soup into a directory: weight shards, index, and the config files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

from ..align import AlignedTensor
from ..engine import execute
from ..engine.sinks import ShardSink, write_index
from ..ingredients import Ingredient
from ..ingredients.files import sidecar_files
from ..io import dtypes
from ..io.shards import Shard, plan_shards
from ..io.source import TensorSource
from ..methods.base import TensorMethod


def shard_plan(tensors: Sequence[AlignedTensor], max_shard_size: int) -> list[Shard]:
    """The output shards; fixed by the tensors and ``max_shard_size`` alone."""
    return plan_shards([(t.key, t.meta) for t in tensors], max_shard_size)


def write_shards(
    directory: Path,
    shards: Sequence[Shard],
    tensors: Sequence[AlignedTensor],
    method: TensorMethod,
    sources: dict[int, TensorSource],
    indices: Sequence[int],
    progress: Callable[[int], None] | None = None,
    threads: int = 1,
    device: str = "cpu",
) -> None:
    """Merge and write each of ``shards`` (all of them, or one rank's share) on ``threads`` workers."""
    by_key = {t.key: t for t in tensors}
    for shard in shards:
        sink = ShardSink(directory, shard)
        try:
            execute(method, [by_key[k] for k, _ in shard.entries], sources, indices, lambda _: sink,
                    progress=progress, threads=threads, device=device)
        except BaseException:
            sink.writer.abort()
            raise
        sink.close()


def copy_sidecars(directory: Path, ingredient: Ingredient, output_dtype: str | None) -> list[str]:
    """Copy config / tokenizer / processor files of ``ingredient``; return their names.

    When the soup is written in another dtype than the ingredient's, the config's
    ``dtype`` (``torch_dtype``) entry is updated to match.
    """
    if ingredient.directory is None:
        return []
    names = []
    for path in sidecar_files(ingredient.directory):
        target = directory / path.name
        if path.name == "config.json" and output_dtype:
            config = json.loads(path.read_text())
            for key in ("dtype", "torch_dtype"):
                if key in config:
                    config[key] = dtypes.TORCH_NAMES[output_dtype]
            target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(path, target)
        names.append(path.name)
    return names


__all__ = ["copy_sidecars", "shard_plan", "write_index", "write_shards"]
