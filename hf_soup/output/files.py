"""Write a merged soup into a directory: weight shards, index, and the config files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Sequence

from ..align import AlignedTensor
from ..engine import execute
from ..engine.prepass import prepass
from ..engine.sinks import ShardSink, write_index
from ..ingredients import Ingredient
from ..ingredients.files import sidecar_files
from ..io import dtypes
from ..io.shards import Shard, plan_shards
from ..io.source import TensorSource
from ..methods.base import TensorMethod

logger = logging.getLogger("hf_soup")


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
        tensors_of_shard = [by_key[k] for k, _ in shard.entries]
        try:
            prepass(method, tensors_of_shard, sources, indices, threads=threads)
            execute(method, tensors_of_shard, sources, indices, lambda _: sink,
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
    code, missing = _code_files(ingredient.directory)
    for path in sidecar_files(ingredient.directory):
        target = directory / path.name
        if path.name == "config.json" and (output_dtype or missing.get("config.json")):
            config = json.loads(path.read_text())
            for key in ("dtype", "torch_dtype"):
                if key in config and output_dtype:
                    config[key] = dtypes.TORCH_NAMES[output_dtype]
            if missing.get("config.json"):  # a soup that names code it lacks cannot be loaded
                logger.warning("%s: config.json's auto_map names %s, which the ingredient lacks; the soup's "
                               "config.json is written without auto_map", ingredient.name, ", ".join(missing["config.json"]))
                config.pop("auto_map", None)
            target.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(path, target)
        names.append(path.name)
    for path in code:  # the custom code auto_map points to (copied, never run)
        (directory / path.relative_to(ingredient.directory)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, directory / path.relative_to(ingredient.directory))
        names.append(path.relative_to(ingredient.directory).as_posix())
    return names


def _code_files(folder: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """The ``auto_map`` module files present in ``folder`` (checked to stay inside it), and those missing per config."""
    from ..ingredients.confine import check_files_inside, safe_member_name
    from ..ingredients.custom_code import folder_code_files

    present, missing = [], {}
    for config_name, files in folder_code_files(folder).items():
        for name in files:
            path = folder / safe_member_name(name, str(folder / config_name))
            if path.is_file():
                present.append(path)
            else:
                missing.setdefault(config_name, []).append(name)
    check_files_inside(folder, present)
    return sorted(set(present)), missing


__all__ = ["copy_sidecars", "shard_plan", "write_index", "write_shards"]
