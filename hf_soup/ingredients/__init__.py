"""Ingredient references, their resolution, and the files that make a checkpoint."""

from .ingredient import Ingredient
from .ref import IngredientRef, parse_ref
from .resolve import resolve_ingredient, resolve_ingredients

__all__ = ["Ingredient", "IngredientRef", "parse_ref", "resolve_ingredient", "resolve_ingredients"]
