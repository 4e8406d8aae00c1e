"""Ingredient references, their resolution, and the files that make a checkpoint.

``ref`` → (``local`` | ``hub_pull`` | a state dict, dispatched by ``resolve``) → :class:`Ingredient`.
Names are loaded on first use: a PEFT adapter folder resolves through :mod:`hf_soup.adapters`,
whose ingredient class builds on :mod:`.ingredient`.
"""

from __future__ import annotations

from ..lazy import lazy_exports

__all__ = ["Ingredient", "IngredientRef", "parse_ref", "resolve_ingredient", "resolve_ingredients"]

_LAZY = {
    "Ingredient": ".ingredient",
    "IngredientRef": ".ref",
    "parse_ref": ".ref",
    "resolve_ingredient": ".resolve",
    "resolve_ingredients": ".resolve",
}


__getattr__ = lazy_exports(__name__, _LAZY)
