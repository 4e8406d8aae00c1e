"""Evaluation for data-driven soups: the split, the task model, metrics, cached logits.

The entry point is :class:`Evaluator`::

    from hf_soup.evaluation import EvaluationSpec, Evaluator

    evaluator = Evaluator.for_ingredients(EvaluationSpec(dataset="./val.parquet"), ingredients)
    evaluator.bind(alignment.tensors, sources)      # what the pipeline does before planning
    evaluator.evaluate_soup([0, 1])                 # uniform soup of ingredients 0 and 1

What a planning method can use (``context.evaluator`` in ``PlanningMethod.plan``):

* ``metric`` (``name``, ``higher_is_better``, ``better(a, b, strict)``, ``sort_key``), ``task``;
* ``ingredient_scores()`` / ``evaluate_ingredient(i)`` — memoised, N passes at most;
* ``evaluate_soup(indices, weights=None)``, ``evaluate_state_dict(sd)`` (checkpoint keys),
  ``evaluate_model(model)`` (an already-built model, e.g. a Trainer's);
* ``running_sum()`` (``add(i)``, ``members``, ``load_candidate(i)``), ``load_plan(tensor_method,
  indices)`` / ``evaluate_plan(...)``, ``load_ingredient(i)`` — candidates formed on the
  evaluation device and put into ``model`` in place (:mod:`.device_candidates`), with the
  bytes the engine writes for the same plan;
* ``builder`` (:class:`SoupBuilder`): ``state_dict(indices, weights)``, ``merge(tensor_method,
  indices)``, ``ingredient(i)``, ``running_sum()`` — candidates streamed by the engine on the host;
* ``logit_cache()`` (:class:`LogitCache`): ``score(indices, weights)``, ``mean_logits``, ``scores``;
* ``model`` (built once) + ``dataloader`` (accelerate-prepared) + :func:`load_checkpoint_weights`;
* ``num_full_evaluations`` (every pass over the split, logit passes included) and
  ``num_logit_passes``; ``describe()`` for the report.

Passes gather their metrics with ``accelerate`` (``gather_for_metrics``), so the same code
run under ``torchrun`` / ``accelerate launch`` splits the data across processes and gets
the same numbers. Imports are lazy: importing this package does not import torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports
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


__getattr__ = lazy_exports(__name__, _LAZY)
