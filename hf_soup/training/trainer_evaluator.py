"""Score candidate soups with a ``transformers.Trainer``'s own evaluation loop.

:class:`TrainerEvaluator` is an :class:`~hf_soup.evaluation.Evaluator` whose passes are
``trainer.evaluation_loop`` over ``trainer.get_eval_dataloader(...)``: the Trainer's eval
dataset of any kind it accepts (a list of dicts, a torch ``Dataset``, a
``datasets.Dataset``, an ``IterableDataset``, one entry of a dict of eval datasets), its
collator, ``compute_metrics``, ``preprocess_logits_for_metrics``, eval batch size and
mixed precision. A candidate's score is therefore the number ``trainer.evaluate()``
prints for that model. Candidates are loaded into a model built once from the
ingredients' config and lent to the Trainer for each pass; the trained model is left as it is.

>>> spec = trainer_evaluation_spec(trainer)                 # doctest: +SKIP
>>> hf_soup.soup(checkpoints, "greedy", "soup", evaluation=spec)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pydantic import ConfigDict

from ..errors import EvaluationError
from ..evaluation.evaluator import Evaluator, RowsCallback, _load_config
from ..evaluation.metrics import Metric
from ..evaluation.spec import EvaluationSpec
from ..evaluation.task_model import architecture_of, build_task_model
from .loop_status import checked_loop
from .trainer_evaluation import metric_of, require_eval_dataset, trainer_metric

logger = logging.getLogger("hf_soup")


class TrainerEvaluationSpec(EvaluationSpec):
    """An evaluation that runs through ``trainer``'s evaluation loop.

    The data is the Trainer's ``eval_dataset`` (any kind), or its entry ``eval_name`` when
    the Trainer has a dict of eval datasets (``dataset`` only names it, for reports);
    ``metric_key`` is the metrics key read (``eval_accuracy``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trainer: Any = None
    eval_name: str | None = None
    metric_key: str = "eval_loss"

    def describe(self) -> dict[str, Any]:
        data = self.eval_data()
        out = {"dataset": self.eval_name, "source": f"Trainer eval_dataset ({type(data).__name__})",
               "metric": self.metric_key, "higher_is_better": self.higher_is_better, "batch_size": self.batch_size}
        return {k: v for k, v in out.items() if v is not None}

    def as_recipe(self) -> dict[str, Any]:
        """What a recipe would need instead of the Trainer (placeholders for what YAML cannot hold)."""
        out = {k: v for k, v in super().as_recipe().items() if k not in ("trainer", "eval_name", "metric_key")}
        out["dataset"] = f"<{self.dataset.strip('<>')}; save it with save_to_disk and give the folder>"
        return out

    def eval_data(self) -> Any:
        """The Trainer's eval dataset this spec scores on."""
        data = self.trainer.eval_dataset
        return data[self.eval_name] if self.eval_name else data

    def build_evaluator(self, ingredients: Sequence[Any], **kwargs: Any) -> "TrainerEvaluator":
        """The evaluator :meth:`Evaluator.for_ingredients` returns for this spec."""
        directory = next((i.directory for i in ingredients if getattr(i, "directory", None) is not None), None)
        if directory is None:
            raise EvaluationError("evaluation: the checkpoints have no folder with config.json to build the model from")
        return TrainerEvaluator(self, config=Path(directory), progress=kwargs.get("progress", False))


def _choose_dataset(trainer: Any) -> tuple[Any, str | None, str, bool]:
    """``(dataset, eval_name, metric_key, greater_is_better)`` as the Trainer ranks models."""
    datasets = require_eval_dataset(trainer)
    key, greater = metric_of(trainer.args)
    if not isinstance(datasets, dict):
        return datasets, None, key, greater
    names = sorted(datasets, key=len, reverse=True)  # the longest name wins: "val_hard" before "val"
    name = next((n for n in names if key.startswith(f"eval_{n}_")), None)
    if name is None:
        raise EvaluationError(
            f"evaluation: the Trainer has several eval datasets ({', '.join(datasets)}) and metric_for_best_model "
            f"({trainer.args.metric_for_best_model!r}) names none of them; set metric_for_best_model to "
            f"'eval_<name>_<metric>' (e.g. 'eval_{next(iter(datasets))}_loss') to choose the one soups are scored "
            "on, or give SoupCallback(evaluation={...})"
        )
    return datasets[name], name, key, greater


def trainer_evaluation_spec(trainer: Any) -> TrainerEvaluationSpec:
    """The evaluation that scores like ``trainer.evaluate()`` (see the module docstring)."""
    dataset, name, key, greater = _choose_dataset(trainer)
    metric = trainer_metric(trainer, key[len(f"eval_{name}_") if name else len("eval_"):])
    label = f"<Trainer eval_dataset{f'[{name!r}]' if name else ''}: {type(dataset).__name__}>"
    return TrainerEvaluationSpec(dataset=label, trainer=trainer, eval_name=name, metric_key=key, metric=metric,
                                 higher_is_better=greater, batch_size=int(trainer.args.per_device_eval_batch_size))


class TrainerEvaluator(Evaluator):
    """An :class:`Evaluator` whose passes are the Trainer's evaluation loop (no dataset loading of its own)."""

    def __init__(self, spec: TrainerEvaluationSpec, *, config: Any, progress: bool = False):
        self.spec = spec
        self.trainer = spec.trainer
        self.config = _load_config(config, False) if isinstance(config, (str, Path)) else config
        self.architecture, self.task = architecture_of(self.config)
        self.metric = Metric.from_spec(spec.metric, spec.higher_is_better)
        self.progress = progress
        self.num_full_evaluations = 0
        self.num_logit_passes = 0
        self._num_examples: int | None = None
        self.device = self.trainer.args.device
        self.model = build_task_model(self.config, dtype=spec.dtype, device=self.device)
        self.builder = None
        self._ingredient_scores: dict[int, float] = {}
        self._logit_cache = None

    @property
    def num_examples(self) -> int:
        if self._num_examples is None:
            try:
                self._num_examples = len(self.spec.eval_data())
            except TypeError:  # an IterableDataset: known after the first pass
                return 0
        return self._num_examples

    @property
    def accelerator(self) -> Any:
        return self.trainer.accelerator

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_examples": self.num_examples}

    def _loop(self, model: Any, description: str, predictions: bool) -> Any:
        trainer = self.trainer
        self.num_full_evaluations += 1
        dataloader = trainer.get_eval_dataloader(self.spec.eval_name)
        with _lent_model(trainer, model), checked_loop(trainer, dataloader) as dataloader:
            output = trainer.evaluation_loop(dataloader, description=description,
                                             prediction_loss_only=False if predictions else None,
                                             metric_key_prefix=f"eval_{self.spec.eval_name}" if self.spec.eval_name else "eval")
        if output.num_samples:
            self._num_examples = int(output.num_samples)
        return output

    def _score_model(self, model: Any, description: str) -> float:
        metrics = self._loop(model, description, predictions=False).metrics
        if self.spec.metric_key not in metrics:
            raise EvaluationError(
                f"evaluation: the Trainer's evaluation returned {sorted(metrics)}, without {self.spec.metric_key!r} "
                f"(metric_for_best_model={self.trainer.args.metric_for_best_model!r}); make compute_metrics return "
                "it, or give SoupCallback(evaluation=...)"
            )
        score = float(metrics[self.spec.metric_key])
        logger.info("%s: %s = %.6g (full evaluation %d)", description, self.spec.metric_key, score,
                    self.num_full_evaluations)
        return score

    def logits(self, state_dict: dict[str, Any] | None = None, on_rows: RowsCallback | None = None,
               description: str = "caching logits") -> tuple[np.ndarray, np.ndarray] | None:
        from ..evaluation.task_model import load_checkpoint_weights

        if state_dict is not None:
            load_checkpoint_weights(self.model, state_dict)
        self.num_logit_passes += 1
        output = self._loop(self.model, description, predictions=True)
        logits, labels = _rows(output.predictions, output.label_ids, self.task)
        if on_rows is not None:
            on_rows(logits, labels)
            return None
        return logits, labels


def _rows(predictions: Any, labels: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    """The scored rows ``(M, C)`` / ``(M,)`` of the Trainer loop's predictions and labels."""
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    predictions, labels = np.asarray(predictions), np.asarray(labels) if labels is not None else None
    if labels is None or predictions.ndim != labels.ndim + 1 or not np.issubdtype(predictions.dtype, np.floating):
        raise EvaluationError(
            "evaluation: this soup method compares logits, and the Trainer's evaluation loop gave predictions of shape "
            f"{predictions.shape} for labels of shape {None if labels is None else labels.shape} (is "
            "preprocess_logits_for_metrics reducing them?); give SoupCallback(evaluation={...}) instead"
        )
    if task == "causal-lm":
        predictions, labels = predictions[:, :-1, :], labels[:, 1:]
    predictions = predictions.reshape(-1, predictions.shape[-1]).astype(np.float32)
    labels = labels.reshape(-1)
    keep = labels != -100
    return predictions[keep], labels[keep]


@contextmanager
def _lent_model(trainer: Any, model: Any) -> Iterator[None]:
    """Let ``trainer`` evaluate ``model``; give its own model back afterwards, and close the loop's progress bar."""
    saved = trainer.model, trainer.model_wrapped
    trainer.model = trainer.model_wrapped = model
    try:
        yield
    finally:
        trainer.model, trainer.model_wrapped = saved
        for callback in trainer.callback_handler.callbacks:
            bar = getattr(callback, "prediction_bar", None)
            if bar is not None:
                bar.close()
                callback.prediction_bar = None
