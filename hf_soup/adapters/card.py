"""Model-card metadata of soups that involve PEFT adapters, from ``soup_report.json``.

* An adapter soup (``output.format: adapter``) is an adapter *of the base*:
  ``base_model`` = the base repo, ``library_name: peft``, tags ``peft``, ``lora``, ``merge``
  (the Hub infers ``base_model_relation: adapter``).
* A full-model soup of adapters is a merge: ``base_model`` lists the adapter repos and the
  base, with ``base_model_relation: merge``.

Only Hub repos can be listed; local ingredients are left out (``None`` when nothing is left).

>>> card_metadata({"output": {"format": "adapter"},
...                "adapters": {"base_model": {"repo_id": "org/base"}, "ingredients": [], "full_model_ingredients": []}})
{'base_model': ['org/base'], 'library_name': 'peft', 'tags': ['peft', 'lora', 'merge']}
"""

from __future__ import annotations

from typing import Any

ADAPTER_TAGS = ["peft", "lora", "merge"]


def card_metadata(report: dict[str, Any]) -> dict[str, Any] | None:
    """The card metadata fields this soup's adapters decide, or ``None`` when no adapter is involved."""
    adapters = report.get("adapters")
    if not adapters:
        return None
    base = (adapters.get("base_model") or {}).get("repo_id")
    if (report.get("output") or {}).get("format") == "adapter":
        return {"base_model": [base] if base else None, "library_name": "peft", "tags": list(ADAPTER_TAGS)}
    kept = {row.get("ref"): row.get("kept", True) for row in report.get("ingredients", [])}
    repos = [row["repo_id"] for row in adapters.get("ingredients", []) if row.get("repo_id") and kept.get(row["ref"], True)]
    repos += [row["repo_id"] for row in report.get("ingredients", [])
              if row.get("repo_id") and row.get("kept", True) and row["ref"] in adapters.get("full_model_ingredients", [])]
    listed = list(dict.fromkeys([*repos, *([base] if base else [])]))
    return {"base_model": listed or None, "base_model_relation": "merge" if listed else None,
            "tags": ["peft", "lora", "merge"]}
