"""From references to open, aligned ingredients: resolve → attach adapter bases → open → align.

Every entry point goes through these two steps (the pipeline runs them apart, as the
evaluation is built in between and each process resolves before any opens):

>>> ingredients, base = resolve_with_bases(["./run-1", "./run-2"])  # doctest: +SKIP
>>> with ExitStack() as stack:  # doctest: +SKIP
...     sources, alignment = open_aligned(stack, ingredients)
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Sequence

from .align import Alignment, align
from .ingredients.ingredient import Ingredient
from .ingredients.resolve import resolve_ingredients
from .io.source import TensorSource


def resolve_with_bases(refs: Sequence[Any], base_model: Any = None,
                       **hub_options: Any) -> tuple[list[Ingredient], Ingredient | None]:
    """Resolve ``refs`` and give PEFT adapters their base model; return the ingredients and the base (or ``None``)."""
    ingredients = resolve_ingredients(list(refs), **hub_options)
    if base_model is None and all(i.weight_format != "adapter" for i in ingredients):
        return ingredients, None
    from .adapters.bases import attach_bases

    return ingredients, attach_bases(ingredients, base_model, **hub_options)


def open_aligned(stack: ExitStack, ingredients: Sequence[Ingredient], *, on_missing: str = "error",
                 dtype: str | None = None, reference: int = 0,
                 names: Sequence[str] | None = None) -> tuple[dict[int, TensorSource], Alignment]:
    """Open every ingredient (closed with ``stack``) and align them; return the sources by index and the alignment.

    ``names``: how errors name each ingredient (default: its reference).
    """
    sources = {index: stack.enter_context(ingredient.open()) for index, ingredient in enumerate(ingredients)}
    names = list(names) if names is not None else [i.name for i in ingredients]
    alignment = align(list(sources.values()), names, [i.config for i in ingredients],
                      on_missing=on_missing, dtype=dtype, reference=reference)
    return sources, alignment
