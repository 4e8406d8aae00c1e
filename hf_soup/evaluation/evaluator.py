"""The :class:`Evaluator`: one task model, one validation split, any number of candidate weights.

>>> spec = EvaluationSpec(dataset="./val.parquet", text_column="text")        # doctest: +SKIP
>>> evaluator = Evaluator.for_ingredients(spec, ingredients)                 # checks data, builds the model once  # doctest: +SKIP
>>> evaluator.bind(alignment.tensors, sources)                               # enables soup/ingredient helpers  # doctest: +SKIP
>>> evaluator.evaluate_ingredient(0), evaluator.evaluate_soup([0, 1, 2])  # doctest: +SKIP
(0.91, 0.93)
>>> evaluator.num_full_evaluations  # doctest: +SKIP
2

Every pass goes through an accelerate-prepared dataloader and its metrics are gathered
across processes (``gather_for_metrics``), so launching the same code with
``accelerate launch`` splits the evaluation without changes. Each pass over the split —
a score or a logit-caching pass — counts as one full evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import EvaluationError
from .data import Columns, build_collate, check_split, load_split
from .metrics import Metric, Totals, row_statistics
from .rank_status import batch_stage
from .spec import EvaluationSpec, parse_evaluation
from .task_model import architecture_of, build_task_model, load_checkpoint_weights

logger = logging.getLogger("hf_soup")

RowsCallback = Callable[[Any, Any], None]
_PIPELINE_TAGS = {"sequence-classification": "text-classification", "image-classification": "image-classification",
                  "causal-lm": "text-generation"}


def _load_config(directory: Any, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except Exception as error:  # transformers raises OSError/ValueError/KeyError here
        raise EvaluationError(
            f"evaluation: cannot read the model config in {directory} ({error}); "
            "set evaluation.processor_from to a folder with config.json"
        ) from None


def _shared_accelerator(device: str | None) -> Any:
    """An ``Accelerator`` on the processes' shared state; a clear error when that state runs elsewhere."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = device == "cpu"
    state = AcceleratorState._shared_state
    if cpu and state and getattr(state.get("device"), "type", "cpu") != "cpu":
        raise EvaluationError(
            f"device: these processes already evaluate on {state['device']} (accelerate's state, set by the launcher "
            "or a Trainer); a multi-process evaluation cannot switch to the CPU: use device 'auto' in this launch"
        )
    return Accelerator(cpu=cpu)


class Evaluator:
    """Scores candidate weights of one architecture on one split.

    ``config`` is a transformers config (or a folder holding ``config.json``);
    ``processor_dir`` holds the tokenizer / image processor (unless the spec gives a
    ``collate_fn``). The data and labels are checked and the model is built here, so a
    bad evaluation fails before any merge work. ``device`` ``"cpu"`` forces the CPU
    (default: accelerate's device); ``accelerator`` reuses an existing ``Accelerator``;
    ``token`` reads gated Hub datasets.
    """

    def __init__(
        self,
        spec: EvaluationSpec | dict | Any,
        *,
        config: Any,
        processor_dir: str | Path | None = None,
        device: str | None = None,
        progress: bool = False,
        accelerator: Any = None,
        token: str | None = None,
    ):
        self.spec = parse_evaluation(spec)
        if self.spec is None:
            raise EvaluationError("evaluation: give a dataset to evaluate on")
        if isinstance(config, (str, Path)):
            processor_dir = processor_dir or config
            config = _load_config(config, self.spec.trust_remote_code)
        self.config = config
        self.architecture, self.task = architecture_of(config)
        self.metric = Metric.from_spec(self.spec.metric, self.spec.higher_is_better)
        if self.metric.name == "perplexity" and self.task != "causal-lm":
            raise EvaluationError(
                f"evaluation.metric: perplexity needs a causal LM, these ingredients are {self.architecture}; "
                "use accuracy or loss"
            )
        self.split = load_split(self.spec, token, progress=progress)
        self.columns: Columns = check_split(self.split, self.spec, self.task, config)
        if self.spec.collate_fn is None and processor_dir is None:
            raise EvaluationError(
                "evaluation: no folder to load the tokenizer / image processor from (the ingredients are bare weights); "
                "set evaluation.processor_from or give a collate_fn"
            )
        self.collate = build_collate(self.spec, self.columns, self.task, processor_dir, config)
        self.progress = progress
        self.num_full_evaluations = 0
        self.num_logit_passes = 0
        self._accelerator = accelerator or self._make_accelerator(device)
        self.device = self._accelerator.device
        self.model = build_task_model(config, dtype=self.spec.dtype, device=self.device,
                                      trust_remote_code=self.spec.trust_remote_code)
        self.dataloader = self._accelerator.prepare_data_loader(self._dataloader())
        self.builder = None
        self._ingredient_scores: dict[int, float] = {}
        self._logit_cache = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def for_ingredients(cls, spec: Any, ingredients: Sequence[Any], **kwargs: Any) -> "Evaluator":
        """Build an evaluator for resolved :class:`~hf_soup.ingredients.Ingredient` objects.

        The config and processor come from ``spec.processor_from`` or else from the first
        ingredient that has a folder.
        """
        spec = parse_evaluation(spec)
        if hasattr(spec, "build_evaluator"):  # a spec that brings its own evaluation loop (a Trainer's)
            return spec.build_evaluator(ingredients, **kwargs)
        directory = spec.processor_from if spec and spec.processor_from else next(
            (i.directory for i in ingredients if getattr(i, "directory", None) is not None), None
        )
        if directory is None:
            raise EvaluationError(
                "evaluation: the ingredients have no folder with config.json (state dicts or bare weight files); "
                "set evaluation.processor_from to a folder holding the model's config and tokenizer / image processor"
            )
        return cls(spec, config=Path(directory), processor_dir=Path(directory), **kwargs)

    @staticmethod
    def _make_accelerator(device: str | None) -> Any:
        """One process: a :class:`LocalAccelerator` on ``device`` (no process-wide state, so calls with
        different devices mix in one process); several: accelerate's, sharing the launcher's (or a Trainer's) state."""
        from .local_accelerator import LocalAccelerator, single_process

        if single_process():
            from ..engine.device import resolve_device

            return LocalAccelerator(resolve_device(device or "auto"))
        return _shared_accelerator(device)

    def _dataloader(self) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(self.split.with_format(None), batch_size=self.spec.batch_size, shuffle=False,
                          collate_fn=self.collate)

    def bind(self, tensors: Sequence[Any], sources: dict[int, Any]) -> "Evaluator":
        """Attach the aligned tensors and open ingredient sources (enables ``evaluate_soup`` etc.)."""
        from .candidates import SoupBuilder

        self.builder = SoupBuilder(tensors, sources)
        self._logit_cache = None
        self._candidates = None
        return self

    @property
    def candidates(self) -> Any:
        """Where candidates are formed (:mod:`~hf_soup.evaluation.device_candidates`): on the model's device
        when its weights are the checkpoint's renamed, else on the host; built on first use."""
        from .device_candidates import candidates_for

        builder = self.require_builder()
        if getattr(self, "_candidates", None) is None:
            self._candidates = candidates_for(self.model, builder, getattr(self.spec, "device_memory", None))
        return self._candidates

    def running_sum(self) -> Any:
        """An empty running sum (greedy): ``add(i)``, ``members``, ``load_candidate(i)`` puts a candidate in :attr:`model`."""
        return self.candidates.running_sum()

    def load_plan(self, method: Any, indices: Sequence[int]) -> None:
        """Put ``method``'s soup of ``indices`` into :attr:`model`, with the bytes the engine writes for that plan."""
        from .device_candidates import load_plan

        load_plan(self.candidates, method, indices)

    def evaluate_plan(self, method: Any, indices: Sequence[int], description: str = "evaluating") -> float:
        """Score ``method``'s soup of ``indices`` (needs :meth:`bind`)."""
        self.load_plan(method, indices)
        return self._score_model(self.model, description)

    def require_builder(self) -> Any:
        """The candidate builder of the bound ingredients (raise ``EvaluationError`` before :meth:`bind`)."""
        if self.builder is None:
            raise EvaluationError(
                "evaluator: no ingredients bound; call evaluator.bind(alignment.tensors, sources) first"
            )
        return self.builder

    # -- properties -----------------------------------------------------------------------

    @property
    def higher_is_better(self) -> bool:
        return self.metric.higher_is_better

    @property
    def num_examples(self) -> int:
        return len(self.split)

    @property
    def accelerator(self) -> Any:
        return self._accelerator

    def describe(self) -> dict[str, Any]:
        """The ``evaluation`` entry of ``soup_report.json``."""
        return {**self.spec.describe(), "num_examples": self.num_examples, "task": _PIPELINE_TAGS[self.task],
                "architecture": self.architecture, "num_full_evaluations": self.num_full_evaluations}

    # -- passes over the split --------------------------------------------------------------

    def _pass(self, model: Any, description: str, on_rows: RowsCallback | None) -> float | None:
        """One full pass; return the built-in metric, or hand every scored row to ``on_rows``."""
        import torch
        from tqdm.auto import tqdm

        accelerator = self._accelerator
        totals = Totals()
        self.num_full_evaluations += 1
        bar = tqdm(self.dataloader, desc=description, leave=False,
                   disable=not (self.progress and accelerator.is_local_main_process))
        model.eval()
        with torch.inference_mode():
            for batch in bar:
                with batch_stage(accelerator):  # a failure on one process stops all, before the gather
                    labels = batch.pop("labels", None)
                    if labels is None:
                        raise EvaluationError("evaluation.collate_fn: batches must hold 'labels' for the metric")
                    logits = model(**batch).logits
                    if self.task == "causal-lm":
                        logits, labels = logits[:, :-1, :], labels[:, 1:]
                if on_rows is not None:
                    self._gather_rows(logits, labels, on_rows)
                else:
                    totals.add(*self._gather_totals(logits, labels))
        return None if on_rows is not None else self.metric.from_totals(totals)

    def _gather_totals(self, logits: Any, labels: Any) -> tuple[float, float, int]:
        import torch

        mask = labels != -100
        correct, nll = row_statistics(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).clamp(min=0))
        correct = correct.reshape(labels.shape) * mask
        nll = nll.reshape(labels.shape) * mask
        if labels.dim() > 1:
            correct, nll, count = correct.sum(dim=1), nll.sum(dim=1), mask.sum(dim=1)
        else:
            count = mask
        stats = torch.stack([correct.double(), nll.double(), count.double()], dim=1)
        stats = self._accelerator.gather_for_metrics(stats)
        correct, nll, count = stats.sum(dim=0).tolist()
        return correct, nll, int(count)

    def _gather_rows(self, logits: Any, labels: Any, on_rows: RowsCallback) -> None:
        accelerator = self._accelerator
        if labels.dim() > 1 and accelerator.num_processes > 1:
            logits = accelerator.pad_across_processes(logits, dim=1)
            labels = accelerator.pad_across_processes(labels, dim=1, pad_index=-100)
        logits, labels = accelerator.gather_for_metrics((logits.contiguous(), labels.contiguous()))
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
        keep = labels != -100
        if not bool(keep.all()):
            logits, labels = logits[keep], labels[keep]
        on_rows(logits.float().cpu().numpy(), labels.cpu().numpy())

    def _score_model(self, model: Any, description: str) -> float:
        if self.metric.needs_all_rows:
            logits, labels = self._collect(model, description)
            score = self.metric.score(logits, labels)
        else:
            score = float(self._pass(model, description, None))
        logger.info("%s: %s = %.6g (full evaluation %d)", description, self.metric.name, score, self.num_full_evaluations)
        return score

    def _collect(self, model: Any, description: str) -> tuple[np.ndarray, np.ndarray]:
        parts: list[np.ndarray] = []
        label_parts: list[np.ndarray] = []
        self._pass(model, description, lambda lg, lb: (parts.append(lg), label_parts.append(lb)))
        return np.concatenate(parts), np.concatenate(label_parts)

    # -- public scoring API ---------------------------------------------------------------

    def evaluate_model(self, model: Any, description: str = "evaluating") -> float:
        """Score an already-built model of the same task (e.g. a Trainer's model)."""
        return self._score_model(model, description)

    def evaluate_state_dict(self, state_dict: dict[str, Any], description: str = "evaluating") -> float:
        """Load a checkpoint-keyed state dict into the task model and score it."""
        load_checkpoint_weights(self.model, state_dict)
        return self._score_model(self.model, description)

    def logits(self, state_dict: dict[str, Any] | None = None, on_rows: RowsCallback | None = None,
               description: str = "caching logits") -> tuple[np.ndarray, np.ndarray] | None:
        """The scored rows' float32 logits ``(M, C)`` and labels ``(M,)`` of ``state_dict``.

        For causal LMs the rows are the scored (shifted, non-padding) token positions.
        With ``on_rows`` the rows are handed over batch by batch instead of returned.
        ``state_dict=None`` uses the weights currently loaded.
        """
        if state_dict is not None:
            load_checkpoint_weights(self.model, state_dict)
        self.num_logit_passes += 1
        if on_rows is not None:
            self._pass(self.model, description, on_rows)
            return None
        return self._collect(self.model, description)

    def evaluate_soup(self, indices: Sequence[int], weights: Sequence[float] | None = None,
                      description: str | None = None) -> float:
        """Score the uniform (or weighted) soup of ingredients ``indices`` (needs :meth:`bind`)."""
        from ..methods.uniform import UniformSoup
        from ..methods.weighted import WeightedSoup

        if weights is None:
            method: Any = UniformSoup(UniformSoup.Params())
        else:
            method = WeightedSoup(WeightedSoup.Params(weights=list(weights)))
        return self.evaluate_plan(method, indices, description or f"soup of {len(indices)}")

    def load_ingredient(self, index: int) -> None:
        """Put ingredient ``index``'s own weights (output dtypes) into :attr:`model` (needs :meth:`bind`)."""
        from ..methods.uniform import UniformSoup

        self.load_plan(UniformSoup(UniformSoup.Params()), [index])

    def evaluate_ingredient(self, index: int) -> float:
        """Score ingredient ``index`` alone (memoised; needs :meth:`bind`)."""
        if index not in self._ingredient_scores:
            if self._logit_cache is not None and index in self._logit_cache.scores:
                self._ingredient_scores[index] = self._logit_cache.scores[index]
            else:
                self.load_ingredient(index)
                self._ingredient_scores[index] = self._score_model(self.model, f"ingredient {index}")
        return self._ingredient_scores[index]

    def ingredient_scores(self) -> list[float]:
        """Every bound ingredient's score, in ingredient order."""
        return [self.evaluate_ingredient(i) for i in range(self.require_builder().num_ingredients)]

    def known_ingredient_scores(self) -> dict[int, float]:
        """The ingredient scores computed so far (no new evaluation)."""
        return dict(self._ingredient_scores)

    def logit_cache(self) -> Any:
        """Every bound ingredient's cached validation logits (built once; N passes)."""
        from .logit_cache import LogitCache

        if self._logit_cache is None:
            self._logit_cache = LogitCache.build(self)
            for index, score in self._logit_cache.scores.items():
                self._ingredient_scores.setdefault(index, score)
        return self._logit_cache
