"""``soup_report.json``: what was merged, how, with which result — enough to reproduce it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__

REPORT_FILE = "soup_report.json"


def ingredient_entries(ingredients: Sequence[Any], plan_indices: Sequence[int], weights: Sequence[float] | None,
                       scores: Sequence[float | None] | None = None) -> list[dict[str, Any]]:
    """One report row per ingredient: ref, repo ID, resolved sha, kept flag, weight, score.

    ``weights`` (one per planned ingredient) is ``None`` for a method whose soup is no fixed
    weighted average; the kept rows then have ``weight: None``.
    """
    rows = []
    position = {index: n for n, index in enumerate(plan_indices)}
    for index, ingredient in enumerate(ingredients):
        kept = index in position
        row: dict[str, Any] = {
            "ref": ingredient.name,
            "repo_id": ingredient.repo_id,
            "sha": ingredient.sha,
            "kept": kept,
            # None: the method has no per-ingredient weight (AME's optimizer steps are not a fixed average)
            "weight": (weights[position[index]] if weights is not None else None) if kept else 0.0,
        }
        if scores is not None and scores[index] is not None:
            row["score"] = scores[index]
        card = ingredient.card_data or {}  # Hub metadata, set by hub_pull
        row.update({k: card[k] for k in ("license", "pipeline_tag", "library_name") if card.get(k) is not None})
        if card.get("private"):  # a push then creates a private repo unless told --public
            row["private"] = True
        rows.append(row)
    return rows


def build_report(
    *,
    method: str,
    parameters: dict[str, Any],
    details: dict[str, Any],
    ingredients: list[dict[str, Any]],
    config: dict[str, Any] | None,
    output: dict[str, Any],
    alignment: dict[str, Any],
    timings: dict[str, float],
    recipe: dict[str, Any],
    num_full_evaluations: int = 0,
    score: float | None = None,
    evaluation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dictionary (JSON-ready)."""
    config = config or {}
    return {
        "hf_soup_version": __version__,
        "method": method,
        "parameters": parameters,
        "details": details,
        "ingredients": ingredients,
        "num_full_evaluations": num_full_evaluations,
        "score": score,
        "evaluation": evaluation,
        "model": {
            "model_type": config.get("model_type"),
            "architectures": config.get("architectures"),
        },
        "output": output,
        "alignment": alignment,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "recipe": recipe,
    }


def write_report(directory: Path, report: dict[str, Any]) -> Path:
    """Write ``soup_report.json`` into ``directory``."""
    path = Path(directory) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def read_report(directory: str | Path) -> dict[str, Any]:
    """Read ``soup_report.json`` from a soup directory."""
    from ..errors import HfSoupError

    path = Path(directory) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HfSoupError(f"{path} is not valid JSON ({error}); restore it, or merge the soup again") from None
    if not isinstance(report, dict):
        raise HfSoupError(f"{path} holds no soup report (a JSON object); restore it, or merge the soup again")
    return report
