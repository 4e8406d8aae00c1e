"""Evaluation for data-driven soups: the split, the task model, metrics, cached logits.

The public entry point is :class:`Evaluator`::

    from hf_soup.evaluation import EvaluationSpec, Evaluator

    evaluator = Evaluator.for_ingredients(EvaluationSpec(dataset="./val.parquet"), ingredients)
    evaluator.bind(alignment.tensors, sources)
    evaluator.evaluate_soup([0, 1])

Imports are lazy: importing this package does not import torch or transformers.
"""

from __future__ import annotations

from typing import Any

from .spec import EvaluationSpec, parse_evaluation

__all__ = ["EvaluationSpec", "Evaluator", "LogitCache", "Metric", "SoupBuilder", "parse_evaluation",
           "build_task_model", "load_checkpoint_weights"]

_LAZY = {
    "Evaluator": ".evaluator",
    "LogitCache": ".logit_cache",
    "Metric": ".metrics",
    "SoupBuilder": ".candidates",
    "build_task_model": ".task_model",
    "load_checkpoint_weights": ".task_model",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
