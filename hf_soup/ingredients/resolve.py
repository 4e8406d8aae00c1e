"""Turn references into :class:`Ingredient` objects: dispatch to ``local``, ``hub_pull`` or a state dict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..errors import HubError, IngredientAccessError, IngredientNotFoundError, RevisionNotFoundError
from .ingredient import Ingredient
from .local import resolve_local
from .ref import IngredientRef, parse_ref

logger = logging.getLogger("hf_soup")


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
    """A checkpoint given more than once weighs that many times in the soup: usually a copy-paste slip, so say so."""
    copies: dict[Any, list[int]] = {}
    for index, ingredient in enumerate(ingredients):
        files = tuple(str(Path(f).resolve()) for f in ingredient.files or [])
        if files:
            copies.setdefault(files, []).append(index)
    for indices in copies.values():
        if len(indices) > 1:
            first, *others = indices
            listed = ", ".join(f"ingredients[{i}]" for i in others)
            logger.warning("%s (%s) %s the same checkpoint as ingredients[%d]; it is %d of the %d ingredients, "
                           "so it counts %d times in the soup", listed, ingredients[first].name,
                           "is" if len(others) == 1 else "are", first, len(indices), len(ingredients), len(indices))
