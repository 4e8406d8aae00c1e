"""Turn references into :class:`Ingredient` objects (local paths here, Hub repos via ``hub_pull``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..errors import HubError, IngredientAccessError, IngredientNotFoundError, NoWeightsError, RevisionNotFoundError
from .confine import check_files_inside
from .files import is_sidecar, sidecar_files, weight_files
from .ingredient import Ingredient, read_config
from .ref import IngredientRef, parse_ref

logger = logging.getLogger("hf_soup")


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
            check_files_inside(path, [p for p in path.iterdir() if p.is_file() and (is_sidecar(p.name) or p.name.startswith("adapter_"))])
            return resolve_adapter(ref, path, sha)
        raise
    check_files_inside(path, [*files, *sidecar_files(path), *path.glob("*.py")])
    return Ingredient(ref, weight_format, files, directory=path, sha=sha, config=read_config(path))


def resolve_ingredient(value: Any, index: int = 0, revision: str | None = None, **hub_options: Any) -> Ingredient:
    """Resolve one reference; Hub options (``token``, ``cache_dir``...) apply to Hub refs."""
    ref = value if isinstance(value, IngredientRef) else parse_ref(value, revision, index)
    if ref.kind == "state_dict":
        return Ingredient(ref, "state_dict")
    if ref.kind == "hub":
        from .hub_pull import pull_ingredient

        try:
            return pull_ingredient(ref, **hub_options)
        except (IngredientNotFoundError, HubError) as error:
            hint = _local_path_hint(ref)
            if hint is None or isinstance(error, (RevisionNotFoundError, IngredientAccessError)):
                raise
            raise type(error)(f"{error}. {hint}") from None
    return resolve_local(ref)


def _local_path_hint(ref: IngredientRef) -> str | None:
    """When ``org/name`` failed on the Hub but ``org`` is a local folder, the user likely mistyped a path."""
    folder, _, name = ref.name.partition("/")
    parent = Path(folder).expanduser()
    if not name or not parent.is_dir():
        return None
    entries = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))[:8]
    return (f"If you meant a local folder: {parent / name} does not exist ({folder}/ holds "
            f"{', '.join(entries) or 'nothing'}); check the path, or write it as ./{ref.name}")


def resolve_ingredients(values: Sequence[Any], **hub_options: Any) -> list[Ingredient]:
    """Resolve every reference, in order; warn about a lone ingredient or a checkpoint given twice."""
    ingredients = [resolve_ingredient(value, index, **hub_options) for index, value in enumerate(values)]
    if len(ingredients) == 1:
        logger.warning("only one ingredient (%s): the result is that checkpoint, only re-written; "
                       "a soup needs at least two", ingredients[0].name)
    _warn_duplicates(ingredients)
    return ingredients


def _warn_duplicates(ingredients: Sequence[Ingredient]) -> None:
    """A checkpoint given twice counts twice in the soup: usually a copy-paste slip, so say so."""
    seen: dict[Any, int] = {}
    for index, ingredient in enumerate(ingredients):
        files = tuple(str(Path(f).resolve()) for f in ingredient.files or [])
        if not files:
            continue
        if files in seen:
            logger.warning("ingredients[%d] (%s) is the same checkpoint as ingredients[%d]; it counts twice in the soup",
                           index, ingredient.name, seen[files])
        else:
            seen[files] = index
