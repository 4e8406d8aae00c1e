"""A soup's scores, evaluation counts and warnings, computed once.

``soup_report.json`` holds the result as ``summary``; the ``hf-soup merge`` lines and
the model card are rendered from it by :func:`score_lines`, so the three never
disagree. Each score names its split and its role:

* ``chosen on`` — the split the method chose (or trained) the soup on: an in-sample
  figure for data-driven methods;
* ``scored on`` — a split the soup was only scored on after it was made (a data-free
  method with ``compare: true``; a learned soup trained on a ``train_split``);
* ``held out`` — a further split never used to make the soup (a learned soup's
  ``test_split``).

>>> summary = {"metric": "accuracy", "scores": [
...     {"split": "validation", "score": 0.91, "role": "chosen on"},
...     {"split": "test", "score": 0.88, "role": "held out"}],
...     "num_full_evaluations": {"method": 7, "comparison": 0, "total": 7}, "warnings": []}
>>> print("\\n".join(score_lines(summary)))
Validation accuracy: 0.9100 on split 'validation' (chosen on this split: in-sample)
Held-out accuracy: 0.8800 on split 'test' (not used to make the soup)
Full evaluations: 7 (7 to make the soup, 0 for the comparison)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_ROLE_TEXT = {
    "chosen on": ("Validation", "chosen on this split: in-sample"),
    "scored on": ("Validation", "scored after the soup was made"),
    "held out": ("Held-out", "not used to make the soup"),
}


def build_summary(details: dict[str, Any], evaluation: dict[str, Any] | None, *, data_driven: bool,
                  total_evaluations: int, comparison_evaluations: int = 0,
                  refs: Sequence[str] = ()) -> dict[str, Any] | None:
    """The ``summary`` entry of the report; ``None`` when no evaluation ran."""
    if not evaluation:
        return None
    metric = evaluation.get("metric") or "score"
    higher = evaluation.get("higher_is_better", True)
    split = details.get("score_split") or evaluation.get("split")
    trained_elsewhere = details.get("train_split") not in (None, split)
    role = "chosen on" if data_driven and not trained_elsewhere else "scored on"
    scores = []
    if details.get("score") is not None:
        scores.append({"split": split, "score": details["score"], "role": role})
    if details.get("test_score") is not None:
        scores.append({"split": details.get("test_split"), "score": details["test_score"], "role": "held out"})
    return {
        "metric": metric,
        "higher_is_better": higher,
        "scores": scores,
        "num_full_evaluations": {"method": total_evaluations - comparison_evaluations,
                                 "comparison": comparison_evaluations, "total": total_evaluations},
        "warnings": below_best_ingredient(details, metric, higher, split, refs),
    }


def below_best_ingredient(details: dict[str, Any], metric: str, higher_is_better: bool, split: str | None,
                          refs: Sequence[str] = ()) -> list[str]:
    """A warning when the soup scores below its best ingredient on the same split (else ``[]``)."""
    import math

    score, scores = details.get("score"), details.get("scores")
    if score is None or not isinstance(scores, list) or not scores:
        return []
    valid = [(i, s) for i, s in enumerate(scores) if s is not None and not math.isnan(s)]
    if not valid or math.isnan(score):
        return []
    index, best = (max if higher_is_better else min)(valid, key=lambda item: item[1])
    if (score >= best) if higher_is_better else (score <= best):
        return []
    name = f"ingredient {index}" + (f" ({refs[index]})" if index < len(refs) else "")
    hint = "use that ingredient alone, or other ingredients"
    if (details.get("single_ingredients") or {}).get("included") is False:
        hint = "include_singles: true lets RADIN return it"
    where = f"split '{split}'" if split else "the evaluation data"
    return [f"the soup scores {score:.4f} {metric} on {where}, below its best {name} at {best:.4f}; {hint}"]


def score_lines(summary: dict[str, Any] | None) -> list[str]:
    """The lines ``hf-soup merge`` prints and the model card shows (no warnings: see ``summary['warnings']``)."""
    if not summary:
        return []
    lines = []
    for entry in summary.get("scores", []):
        prefix, note = _ROLE_TEXT.get(entry.get("role"), ("Validation", entry.get("role") or ""))
        where = f"split '{entry['split']}'" if entry.get("split") else "the evaluation data"
        lines.append(f"{prefix} {summary['metric']}: {entry['score']:.4f} on {where} ({note})")
    counts = summary.get("num_full_evaluations") or {}
    if counts.get("total"):
        lines.append(f"Full evaluations: {counts['total']} ({counts.get('method', 0)} to make the soup, "
                     f"{counts.get('comparison', 0)} for the comparison)")
    return lines
