"""What a callback soup's report and card say about the checkpoints or trials that went in.

:func:`annotate` adds to the ``soup_report.json`` of :func:`hf_soup.soup`:

* on each ingredient row: ``label`` (``checkpoint-40``, ``run-3``), ``step``, ``epoch``,
  ``metrics`` (the last eval metrics), and for sweep trials ``params`` (hyperparameters),
  ``objective`` and ``pruned``; ``score`` (the Trainer's metric) when the method set none;
* a ``training`` key: ``kind`` (``checkpoints`` | ``sweep``), ``run_dir``, ``metric``,
  ``greater_is_better``, ``selection``, and ``entries`` — one per harvested checkpoint or
  registered trial, souped or not, with ``used`` (given to the method), ``kept`` (in the
  soup), ``weight`` or ``reason`` (``pruned`` | ``not selected``).

The default model card renders ``training`` as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INGREDIENT_FIELDS = ("label", "step", "epoch", "params", "objective", "pruned", "metrics")


def annotate(report, chosen, candidates, training, destination: Path) -> dict[str, Any]:
    """Add the checkpoints' / trials' metadata to the soup report (rows and a ``training`` key)."""
    rows = report["ingredients"]
    for row, (_, record) in zip(rows, chosen):
        row.update({k: record[k] for k in INGREDIENT_FIELDS if record.get(k) is not None})
        if row.get("score") is None and record.get("score") is not None:
            row["score"] = record["score"]
    position = {str(folder): n for n, (folder, _) in enumerate(chosen)}
    entries = []
    for folder, record in candidates:
        n = position.get(str(folder))
        entry = {k: v for k, v in record.items() if k not in ("sweep_id", "source", "kind")}
        entry["used"] = n is not None
        entry["kept"] = bool(rows[n]["kept"]) if n is not None else False
        if n is not None:
            entry["weight"] = rows[n]["weight"]
        elif record.get("pruned"):
            entry["reason"] = "pruned"
        else:
            entry["reason"] = "not selected"
        entries.append(entry)
    report["training"] = {**training, "entries": entries}
    recipe_output = report.get("recipe", {}).get("output")
    if isinstance(recipe_output, dict) and "dir" in recipe_output:
        recipe_output["dir"] = str(destination)
    return report
