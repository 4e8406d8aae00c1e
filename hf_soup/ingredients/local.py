"""Resolve a local folder or weight file into an :class:`Ingredient` (PEFT adapter folders included)."""

from __future__ import annotations

from pathlib import Path

from ..adapters.detect import is_adapter_folder, resolve_adapter
from ..errors import IngredientNotFoundError, NoWeightsError
from .confine import check_files_inside
from .files import is_sidecar, sidecar_files, weight_files
from .ingredient import Ingredient, read_config
from .ref import IngredientRef


def resolve_local(ref: IngredientRef, directory: Path | None = None, sha: str | None = None) -> Ingredient:
    """Resolve a local directory or weight file (``directory`` overrides ``ref.name``)."""
    path = Path(directory or ref.name).expanduser()
    if not path.exists():
        raise IngredientNotFoundError(f"{ref}: no such file or directory")
    if path.is_file():
        if path.suffix == ".safetensors":
            return Ingredient(ref, "safetensors", [path], sha=sha)
        if path.suffix in (".bin", ".pt", ".pth"):
            return Ingredient(ref, "bin", [path], sha=sha)
        raise NoWeightsError(f"{ref}: {path.name} is not a weight file; give a .safetensors/.bin file or a model folder")
    try:
        weight_format, files = weight_files(path)
    except NoWeightsError:
        if is_adapter_folder(path):  # a PEFT adapter (full-model weights win when both are there, as on the Hub)
            check_files_inside(path, [p for p in path.iterdir()
                                      if p.is_file() and (is_sidecar(p.name) or p.name.startswith("adapter_"))])
            return resolve_adapter(ref, path, sha)
        raise
    check_files_inside(path, [*files, *sidecar_files(path), *path.glob("*.py")])
    return Ingredient(ref, weight_format, files, directory=path, sha=sha, config=read_config(path))
