"""The example recipes stay valid as the recipe schema evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_soup.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "examples" / "recipes").glob("*.yaml"))


def test_there_are_example_recipes():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_example_recipe_is_valid(path):
    recipe = load_recipe(path)
    expected = {"lora_adapters": "weighted"}.get(path.stem, path.stem)
    assert recipe.method.name == expected and recipe.output.dir
    if recipe.method.name in {"greedy", "radin", "learned"}:
        assert recipe.evaluation is not None
