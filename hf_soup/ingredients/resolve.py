"""Turn references into :class:`Ingredient` objects (local paths here, Hub repos via ``hub_pull``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import IngredientNotFoundError, NoWeightsError
from .files import weight_files
from .ingredient import Ingredient, read_config
from .ref import IngredientRef, parse_ref


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
    from ..adapters.resolve import is_adapter_folder, resolve_adapter

    try:
        weight_format, files = weight_files(path)
    except NoWeightsError:
        if is_adapter_folder(path):  # a PEFT adapter (full-model weights win when both are there, as on the Hub)
            return resolve_adapter(ref, path, sha)
        raise
    return Ingredient(ref, weight_format, files, directory=path, sha=sha, config=read_config(path))


def resolve_ingredient(value: Any, index: int = 0, revision: str | None = None, **hub_options: Any) -> Ingredient:
    """Resolve one reference; Hub options (``token``, ``cache_dir``...) apply to Hub refs."""
    ref = value if isinstance(value, IngredientRef) else parse_ref(value, revision, index)
    if ref.kind == "state_dict":
        return Ingredient(ref, "state_dict")
    if ref.kind == "hub":
        from .hub_pull import pull_ingredient

        return pull_ingredient(ref, **hub_options)
    return resolve_local(ref)


def resolve_ingredients(values: Sequence[Any], **hub_options: Any) -> list[Ingredient]:
    """Resolve every reference, in order."""
    return [resolve_ingredient(value, index, **hub_options) for index, value in enumerate(values)]
