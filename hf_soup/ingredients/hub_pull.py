"""Download Hub ingredients (placeholder until the Hub issue lands)."""

from __future__ import annotations

from typing import Any

from ..errors import IngredientError
from .ref import IngredientRef


def pull_ingredient(ref: IngredientRef, **options: Any):
    """Resolve ``org/name[@revision]`` to a local snapshot."""
    raise IngredientError(f"{ref}: Hub ingredients are not supported yet; download the repo and pass its folder")
