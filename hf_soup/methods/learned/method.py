"""Learned soups: MEHL-Soup and MEHL-Soup+ (Li et al., ECCV 2024), and the simplex Learned-Soup.

```yaml
method: {name: learned, layerwise: true, model_batch: 3}
evaluation: {dataset: ./val.parquet, split: validation}
```

Mixing coefficients are trained on data (the evaluation split, or ``train_split``) by
block-coordinate descent over mini-batches of ``model_batch`` ingredients (Algorithm 1),
with the gradient of every coefficient taken from one graph on the combined model
(eq. 6). The result is a per-(ingredient, block) weighted soup — a ``weighted`` plan
with per-tensor weights (each block's weights sum to 1; extrapolation allowed) that the
engine writes like any other soup. See :mod:`hf_soup.methods.learned` for the pieces.

>>> LearnedSoup.Params(layerwise=True, model_batch=2).hyperplane
True
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from ...errors import MethodParameterError
from ..base import MergeContext, MergePlan, MethodParams, PlanningMethod

logger = logging.getLogger("hf_soup")

DEFAULT_MODEL_BATCH = 4
#: Paper §4.4, "Number of inner training iterations": 1K inner iterations, i.e. 5 epochs
#: over the validation set, for every model batch.
DEFAULT_INNER_EPOCHS = 5.0
_MAX_LOSS_POINTS = 200


class LearnedParams(MethodParams):
    """Recipe keys of ``method: learned``; the defaults are the paper's experimental settings.

    * ``layerwise`` — false: MEHL-Soup (one coefficient per ingredient); true: MEHL-Soup+
      (one per ingredient and parameter tensor, or per ``blocks`` pattern). Paper §3.3 /
      Algorithm 1 (layer-wise ``+``); Table 1 reports both.
    * ``blocks`` — regular expressions grouping parameters (in-memory names) into blocks
      with ``layerwise: true``; capture groups split a pattern into one block per value
      (``'layers\\.(\\d+)\\.'``: one block per layer); unmatched tensors keep their own block.
    * ``model_batch`` — ingredients held at once, b (default min(K, 4)). §4.4, "Model
      mini-batch size": accuracy varies by < 0.1 % with b, so b is a memory choice. The
      differences that do not fit in ``evaluation.device_memory`` are streamed (formed again
      at each use, same result); see :mod:`hf_soup.methods.learned.residency`.
    * ``outer_epochs`` — passes over the ingredients, each a new seeded shuffle (default 1).
      §4.4, "Number of model training iterations": one model epoch, T = ceil(K/b) outer
      iterations, "for efficiency" (more gave minor gains).
    * ``inner_steps`` / ``inner_epochs`` — steps J per model batch, given directly or as
      passes over the training split (default ``inner_epochs: 5``). §4.4, "Number of inner
      training iterations": 1K inner iterations, "corresponding to 5 epochs over the
      validation set"; more did not help.
    * ``optimizer`` (``adamw`` | ``sgd``), ``lr``, ``weight_decay``, ``momentum`` (sgd).
      The paper's text does not state them (Algorithm 1 writes a plain gradient step
      with η; §4 defers training details to its Appendix B). Defaults: ``adamw``
      with ``weight_decay: 0`` as in the authors' released script; ``lr: 0.05`` is this
      project's choice: the released script's lr 0.01 applies to ingredient directions
      normalised to unit norm per block, which hf-soup does not do (coefficients here
      are the α of eq. 5 on the raw differences θ_k − θ̄), so the value does not carry over.
    * ``lr_schedule`` — ``cosine`` (default, as the released script), ``linear`` or
      ``constant``, after a linear warmup over ``warmup_ratio`` of all steps (default 0.1).
      The released script restarts a cosine with 20 % warmup for every model batch; here
      one schedule spans the whole run (a documented difference).
    * ``data_batch_size`` — examples per step (default: the evaluation's ``batch_size``).
    * ``micro_batch_size`` — rows per forward/backward pass (default: none, each process takes
      its share ``rank::P`` of every step's examples in one pass). When set, each step's
      examples are cut into micro-batches of this many rows, dealt to the processes
      round-robin, and their loss and gradient terms are summed in a fixed order in float64:
      the coefficients are then the same, bit for bit, whatever the number of processes
      (``torchrun``), at one pass per micro-batch. See ``docs/distributed.md``.
    * ``seed`` — model order and data shuffles (default: the recipe's seed).
    * ``hyperplane`` — true (default): coefficients on the hyperplane through the
      ingredients (eq. 5, extrapolation allowed); false: softmax weights on the simplex,
      the original Learned-Soup (eq. 2), kept for comparison.
    * ``train_split`` — the split the coefficients are trained on (default: the
      evaluation split, as the paper's D^val); ``test_split`` — a further split the
      result is scored on (held out).
    """

    layerwise: bool = False
    blocks: list[str] | None = None
    model_batch: int | None = Field(default=None, ge=1)
    outer_epochs: int = Field(default=1, ge=1)
    inner_steps: int | None = Field(default=None, ge=1)
    inner_epochs: float | None = Field(default=None, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=0.05, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    data_batch_size: int | None = Field(default=None, ge=1)
    micro_batch_size: int | None = Field(default=None, ge=1)
    seed: int | None = None
    hyperplane: bool = True
    train_split: str | None = None
    test_split: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "LearnedParams":
        if self.inner_steps is not None and self.inner_epochs is not None:
            raise ValueError("inner_steps and inner_epochs: give one of them (steps per model batch, or passes over the data)")
        if self.blocks and not self.layerwise:
            raise ValueError("blocks: block patterns need layerwise: true (MEHL-Soup+); remove blocks or set layerwise")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("momentum: only used by optimizer: sgd; remove it or set optimizer: sgd")
        if self.blocks:
            from .blocks import compile_patterns

            compile_patterns(self.blocks)
        return self

# The model card's section on the coefficients (Jinja, rendered with the card template's variables).
CARD_SECTION = (
    '{% set learned = report.details or {} %}{% if learned.coefficients %}\n'
    '## Learned coefficients\n'
    '\n'
    '{{ learned.variant }}: {{ learned.coefficients.weights | length }} block(s) x {{ ingredients | length }} '
    'ingredients, trained on the **{{ learned.train_split }}** split ({{ learned.train_examples }} examples, '
    '{{ learned.steps }} steps, {{ learned.model_batch }} ingredients loaded at a time); the score above is on the '
    '**{{ learned.score_split }}** split{% if learned.test_score is defined and learned.test_score is not none %}, '
    'and on the held-out **{{ learned.test_split }}** split it is **{{ "%.4f" | format(learned.test_score) }}**'
    '{% endif %}. Training loss: uniform soup {{ "%.4f" | format(learned.train_loss_uniform) }} -> learned soup '
    '{{ "%.4f" | format(learned.train_loss_learned) }}. Weights range from '
    '{{ "%.3f" | format(learned.coefficients.min) }} to {{ "%.3f" | format(learned.coefficients.max) }} '
    "(each block's weights sum to 1).\n"
    '{% if learned.coefficients_plot %}\n'
    '![Distribution of the learned mixing weights]({{ learned.coefficients_plot }})\n'
    '{% endif %}{% endif %}'
)


class LearnedSoup(PlanningMethod):
    """MEHL-Soup(+): learned per-(ingredient, block) weights, O(b x model) memory."""

    name = "learned"
    Params = LearnedParams
    paper = "https://github.com/nblt/MEHL-Soup"
    paper_title = ("Scalable Learned Model Soup on a Single GPU: An Efficient Subspace Training Strategy "
                   "(Li et al., ECCV 2024), code and paper")
    card_section = CARD_SECTION

    def setup(self, context: MergeContext) -> None:
        count = context.num_ingredients
        if count < 2:
            raise MethodParameterError("method learned: needs at least 2 ingredients to learn how to mix them")
        batch = self.params.model_batch
        if batch is not None and batch > count:
            raise MethodParameterError(
                f"method.model_batch: {batch} is more than the {count} ingredients; use 1 to {count}"
            )
        if context.evaluator is None:
            raise MethodParameterError(
                "method learned: needs evaluation data to train the coefficients on; add an evaluation: section "
                "(dataset, split, columns) to the recipe, or pass evaluation= to hf_soup.soup()"
            )

    def model_batch(self, count: int) -> int:
        return self.params.model_batch or min(count, DEFAULT_MODEL_BATCH)

    def plan(self, context: MergeContext, ingredients: Sequence[Any]) -> MergePlan:
        from .task import LearnedTask

        params = self.params
        evaluator = context.evaluator
        seed = params.seed if params.seed is not None else context.seed
        task = LearnedTask(evaluator, split=params.train_split,
                           batch_size=params.data_batch_size or evaluator.spec.batch_size, seed=seed,
                           micro_batch_size=params.micro_batch_size)
        if params.test_split:  # fail on a bad test split now, build its evaluator after learning
            from .task import check_other_split

            check_other_split(evaluator, params.test_split)
        test = (lambda: self._test_evaluator(evaluator, ingredients)) if params.test_split else None
        return self._learn(task, evaluator, test, seed)

    def comparison_evaluator(self, evaluator: Any) -> Any:
        """The evaluator ``compare: true`` scores its table on: the ``test_split`` one, else ``None``.

        The coefficients were fitted on the evaluation (or ``train_split``) split, so the
        table is computed on the held-out split when there is one; it is bound to the same
        ingredients as ``evaluator``.
        """
        test = getattr(self, "_test", None)
        if test is None or evaluator is None or evaluator.builder is None:
            return None
        return test.bind(evaluator.builder.tensors, evaluator.builder.sources)

    @property
    def held_out_evaluator(self) -> Any:
        """The ``test_split`` evaluator once the soup is learned (its passes count in the report), else ``None``."""
        return getattr(self, "_test", None)

    # -- pieces ----------------------------------------------------------------------------

    def _test_evaluator(self, evaluator: Any, ingredients: Sequence[Any]) -> Any:
        from ...evaluation import Evaluator

        spec = evaluator.spec.model_copy(update={"split": self.params.test_split})
        test = Evaluator.for_ingredients(spec, ingredients, accelerator=evaluator.accelerator)
        return test

    def config(self, task: Any, seed: int) -> Any:
        from .bcd import LearnConfig

        p = self.params
        epochs = p.inner_epochs if p.inner_epochs is not None else DEFAULT_INNER_EPOCHS
        steps = p.inner_steps or max(1, math.ceil(epochs * task.batches_per_epoch))
        return LearnConfig(model_batch=self.model_batch(task.num_models), outer_epochs=p.outer_epochs,
                           inner_steps=steps, optimizer=p.optimizer, lr=p.lr, weight_decay=p.weight_decay,
                           momentum=p.momentum, lr_schedule=p.lr_schedule, warmup_ratio=p.warmup_ratio, seed=seed,
                           hyperplane=p.hyperplane)

    def layout(self, task: Any) -> tuple[Any, dict[str, int]]:
        from .blocks import BlockLayout
        from .keymap import checkpoint_blocks

        layout = BlockLayout.build(task.names, layerwise=self.params.layerwise, patterns=self.params.blocks)
        groups, key_block = checkpoint_blocks(task.model, layout)
        return layout.merged(groups), key_block

    def _learn(self, task: Any, evaluator: Any, test: Any, seed: int) -> MergePlan:
        from .bcd import learn_block_coordinate
        from .schedule import data_stream

        evaluations_before = evaluator.num_full_evaluations
        config = self.config(task, seed)
        layout, key_block = self.layout(task)
        reduce = task.reducer()
        # within evaluation.device_memory, or refused before any ingredient is read
        residency = task.residency(config.model_batch,
                                   simplex_rest=not config.hyperplane and config.model_batch < task.num_models)
        started = time.perf_counter()
        task.prepare_buffers()
        uniform: dict[str, float] = {}
        result = learn_block_coordinate(
            layout, task.load, data_stream(task.batches), task.loss, config, num_models=task.num_models,
            reduce=reduce, keep_soup=True, on_start=lambda soup: uniform.setdefault("loss", task.full_loss(soup, reduce)),
            streamed=set(residency.streamed), read=task.read_parameter)
        learned_loss = task.full_loss(result.soup, reduce)
        seconds = time.perf_counter() - started
        method = self.weighted_method(result.weights, layout, key_block, evaluator.builder.tensors)
        indices = list(range(task.num_models))
        # Score the soup the plan writes (formed on the evaluation device, rounded once), not the float32 one trained.
        result.soup = None
        score = evaluator.evaluate_plan(method, indices, "learned soup")
        details = self.details(result, layout, config, task, evaluator, seconds, score, key_block)
        details["num_full_evaluations"] = evaluator.num_full_evaluations - evaluations_before
        details["train_loss_uniform"], details["train_loss_learned"] = uniform["loss"], learned_loss
        details["training_memory"] = residency.report()
        if test is not None:
            self._test = test()
            details["test_score"] = self._test.evaluate_model(task.model, "learned soup (test split)")
            details["test_split"] = self.params.test_split
            details["num_full_evaluations"] += 1
        plan = MergePlan(method, indices, details)
        _attach_plot(plan, result.weights, layout.names, details["variant"])
        return plan

    def weighted_method(self, weights: np.ndarray, layout: Any, key_block: dict[str, int], tensors: Sequence[Any]) -> Any:
        """The ``weighted`` tensor method writing these per-block weights per checkpoint key.

        Every merged checkpoint key gets its block's weights; keys holding no learned
        parameter (floating-point buffers) get the uniform weights, which is what the
        training used. ``weights`` (the default) is the parameter-count-weighted mean over
        blocks, shown in the ingredient table.
        """
        from .keymap import NOT_LEARNED
        from ..weighted import WeightedSoup

        count = weights.shape[0]
        uniform = [1.0 / count] * count
        per_tensor: dict[str, list[float]] = {}
        sizes = np.zeros(layout.num_blocks)
        for tensor in tensors:
            if tensor.action != "merge":
                continue
            block = key_block.get(tensor.key, NOT_LEARNED)
            per_tensor[tensor.key] = uniform if block == NOT_LEARNED else [float(x) for x in weights[:, block]]
            if block != NOT_LEARNED:
                sizes[block] += math.prod(tensor.shape)
        default = (weights @ sizes / sizes.sum()) if sizes.sum() else weights.mean(axis=1)
        if layout.num_blocks == 1:
            default = weights[:, 0]
            per_tensor = {k: w for k, w in per_tensor.items() if w is uniform}
        return WeightedSoup(WeightedSoup.Params(weights=[float(x) for x in default], normalize=False,
                                                per_tensor=per_tensor))

    def details(self, result: Any, layout: Any, config: Any, task: Any, evaluator: Any, seconds: float,
                score: float, key_block: dict[str, int]) -> dict[str, Any]:
        from .plot import PLOT_FILE

        p = self.params
        variant = ("MEHL-Soup" if p.hyperplane else "Learned-Soup (simplex)") + ("+" if p.layerwise else "")
        losses = result.losses
        stride = max(1, len(losses) // _MAX_LOSS_POINTS)
        return {
            "variant": variant,
            "hyperplane": p.hyperplane,
            "layerwise": p.layerwise,
            "model_batch": config.model_batch,
            "inner_steps": config.inner_steps,
            "outer_iterations": len(result.model_batches),
            "steps": result.steps,
            "seed": config.seed,
            "train_split": task.split_name,
            "train_examples": task.num_examples,
            "score_split": evaluator.spec.split or "validation",
            "loss_curve": {"every": stride, "values": [float(x) for x in losses[::stride]]},
            "learning_seconds": seconds,
            "coefficients": {
                "blocks": layout.names,
                "weights": np.asarray(result.weights).T.tolist(),
                "raw": np.asarray(result.raw).T.tolist(),
                "layout": "weights[block][ingredient]; each block's weights sum to 1",
                "min": float(np.min(result.weights)),
                "max": float(np.max(result.weights)),
            },
            "checkpoint_blocks": key_block,
            "model_batches": result.model_batches,
            "score": score,
            "metric": evaluator.metric.name,
            "higher_is_better": evaluator.higher_is_better,
            "coefficients_plot": PLOT_FILE,
        }


def _attach_plot(plan: MergePlan, weights: np.ndarray, block_names: list[str], title: str) -> None:
    from .plot import PLOT_FILE, coefficient_plot_png

    png = coefficient_plot_png(weights, block_names, title)
    if png is None:
        plan.details["coefficients_plot"] = None
    else:
        plan.files[PLOT_FILE] = png
