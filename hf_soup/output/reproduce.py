"""The card's "Reproduce this soup" section: a recipe that only names what exists after the run.

Hub ingredients are pinned to their commit and can be merged again anywhere. Local folders
can be merged again only where they exist: the card says which ingredients were local, and
which were gone when the card was written (a ``SoupCallback`` deletes the checkpoints it
harvested). The output folder, ``overwrite``, the card template and ``push_to_hub`` describe
where this soup went, not how it was made: they are left out, so re-running the recipe never
pushes over the published soup.

>>> card_recipe({"recipe": {"ingredients": ["org/a"], "push_to_hub": {"repo_id": "me/s"}, "output": {"dir": "x"}}})
{'ingredients': ['org/a']}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .escape import md_code

_PLACE_KEYS = ("dir", "overwrite", "card_template")


def repo_id_given(model_id: str) -> bool:
    """Whether the card is rendered for a Hub repo (not for the local folder ``./soup``)."""
    return model_id != "./soup"


def card_recipe(report: dict[str, Any]) -> dict[str, Any]:
    """The report's recipe without where the soup was written or pushed."""
    recipe = dict(report.get("recipe") or {})
    recipe.pop("push_to_hub", None)
    output = recipe.get("output")
    if isinstance(output, dict):
        output = {k: v for k, v in output.items() if k not in _PLACE_KEYS}
        if output:
            recipe["output"] = output
        else:
            recipe.pop("output")
    return recipe


def _local_refs(report: dict[str, Any]) -> list[str]:
    return [str(row.get("ref")) for row in report.get("ingredients") or []
            if isinstance(row, dict) and not row.get("repo_id") and row.get("ref")]


def reproduce_notes(report: dict[str, Any], pushed: bool = False) -> list[str]:
    """Markdown sentences on what the recipe cannot re-run (empty when every ingredient is a pinned Hub repo)."""
    local = _local_refs(report)
    if not local:
        return []
    training = report.get("training") if isinstance(report.get("training"), dict) else {}
    if training and training.get("ingredients_kept") is False:
        return ["The ingredients were checkpoints harvested during training and deleted after souping "
                "(`SoupCallback(keep_ingredients=False)`): the paths in this recipe no longer exist, so it "
                "documents the soup but cannot be run again."]
    gone = [ref for ref in local if not Path(ref).expanduser().exists()]
    notes = [f"Local ingredients (folders, not Hub repos): {', '.join(md_code(ref) for ref in local)}. The recipe "
             "runs only on a machine that has them" + (", not from the Hub where this card is published." if pushed else ".")]
    if gone:
        notes.append(f"Not found when this card was written: {', '.join(md_code(ref) for ref in gone)}.")
    return notes
