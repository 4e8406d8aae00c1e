"""What a ``transformers.Trainer`` evaluates on and ranks by, read as hf_soup's evaluation.

:func:`metric_of`, :func:`require_eval_dataset` and :func:`trainer_metric` read the
Trainer's settings; both ways of scoring like the Trainer use them.
:func:`evaluation_from_trainer` turns a Trainer's eval dataset, data collator and
``compute_metrics`` into an ``evaluation`` mapping (the keys of
``hf_soup.evaluation.EvaluationSpec``) for learned soups, which train on the data
(greedy and RADIN score through the Trainer's own loop: :mod:`.trainer_evaluator`):

* the metric is ``args.metric_for_best_model`` (``eval_`` prefix optional), better when
  ``args.greater_is_better``; without one it is the eval loss, lower is better — the
  Trainer's own defaults;
* ``loss`` is scored as the mean cross-entropy of the logits; any other metric calls
  ``compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))`` and reads
  the metric from the returned dict. ``preprocess_logits_for_metrics`` is not applied.

>>> metric_of(TrainingArguments("out", metric_for_best_model="accuracy"))  # doctest: +SKIP
('eval_accuracy', True)
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import EvaluationError


def metric_of(args: Any) -> tuple[str, bool]:
    """``(metrics key, greater_is_better)`` the Trainer ranks models by."""
    name = getattr(args, "metric_for_best_model", None) or "loss"
    key = name if name.startswith("eval_") else f"eval_{name}"
    greater = getattr(args, "greater_is_better", None)
    if getattr(args, "metric_for_best_model", None) is None or greater is None:
        greater = not key.endswith("loss")
    return key, bool(greater)


def compute_metrics_scorer(compute_metrics: Callable[[Any], dict[str, float]], name: str) -> Callable[[Any, Any], float]:
    """Wrap a Trainer ``compute_metrics`` as ``f(logits, labels) -> float`` reading metric ``name``."""
    from transformers import EvalPrediction

    def scorer(logits: Any, labels: Any) -> float:
        metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
        for key in (name, f"eval_{name}"):
            if key in metrics:
                return float(metrics[key])
        raise EvaluationError(
            f"evaluation: compute_metrics returned {sorted(metrics)} but metric_for_best_model asks for {name!r}; "
            "make them agree, or give SoupCallback(evaluation=...)"
        )

    scorer.__name__ = name
    return scorer


def require_eval_dataset(trainer: Any) -> Any:
    """The Trainer's ``eval_dataset``; an error saying how to give one when it has none."""
    dataset = getattr(trainer, "eval_dataset", None)
    if dataset is None:
        raise EvaluationError(
            "evaluation: this soup method needs validation data, and the Trainer has no eval_dataset; "
            "give Trainer(eval_dataset=...) or SoupCallback(evaluation={...})"
        )
    return dataset


def trainer_metric(trainer: Any, name: str) -> Any:
    """The ``metric`` of an evaluation for metric ``name``: ``"loss"``, or ``trainer.compute_metrics`` read at it."""
    if name == "loss":
        return "loss"
    if getattr(trainer, "compute_metrics", None) is None:
        raise EvaluationError(
            f"evaluation: metric_for_best_model is {name!r} but the Trainer has no compute_metrics; "
            "give Trainer(compute_metrics=...) or SoupCallback(evaluation=...)"
        )
    return compute_metrics_scorer(trainer.compute_metrics, name)


def evaluation_from_trainer(trainer: Any) -> dict[str, Any]:
    """The ``evaluation`` mapping that scores like ``trainer`` does (see the module docstring)."""
    dataset = require_eval_dataset(trainer)
    if isinstance(dataset, dict):
        raise EvaluationError(
            f"evaluation: the Trainer has several eval datasets ({', '.join(dataset)}); "
            "choose one with SoupCallback(evaluation={'dataset': ..., ...})"
        )
    if type(dataset).__name__ != "Dataset" or not type(dataset).__module__.startswith("datasets"):
        raise EvaluationError(
            f"evaluation: the Trainer's eval_dataset is a {type(dataset).__name__}; learned soups train on the "
            "evaluation data and need a datasets.Dataset. Convert it (datasets.Dataset.from_list(...)) or give "
            "SoupCallback(evaluation=...)"
        )
    remove = getattr(trainer, "_remove_unused_columns", None)
    if remove is not None and getattr(trainer, "model", None) is not None:
        dataset = remove(dataset, description="evaluation")
    key, greater = metric_of(trainer.args)
    return {
        "dataset": dataset,
        "metric": trainer_metric(trainer, key[len("eval_"):]),
        "higher_is_better": greater,
        "collate_fn": trainer.data_collator,
        "batch_size": int(trainer.args.per_device_eval_batch_size),
    }
