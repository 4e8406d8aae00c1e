"""The task side of a learned soup: ingredients as parameters, data as batches, the loss.

:class:`LearnedTask` wraps a bound :class:`~hf_soup.evaluation.Evaluator` (its task
model, collate function, accelerator and streaming ``SoupBuilder``) and gives the
optimisers what they need:

* ``load(k)`` — ingredient k's parameters in the model's in-memory key space: put into
  the task model by the evaluator (``load_ingredient``: on its device through the key
  map, or through transformers' key conversion), then read back;
* ``batches(epoch)`` — a seeded shuffle of the training split per epoch, cut into global
  batches of ``batch_size`` rows; with P processes each rank takes rows ``rank::P`` of
  every global batch, so every step sees the same examples as a single process would
  (the gradients are then summed with example weights, see ``bcd``). With
  ``micro_batch_size`` each global batch is cut into micro-batches of that many rows,
  dealt round-robin to the processes (:class:`~.bcd.MicroBatches`), and their terms are
  summed in a fixed order in float64: the same bits for any number of processes;
* ``loss(params, batch)`` — the model's own loss (cross-entropy for classifiers, shifted
  token cross-entropy for causal LMs) with ``torch.func.functional_call`` on ``params``,
  and the number of examples / scored tokens it averages over.

The model runs in eval mode (no dropout) so steps are deterministic.

>>> task = LearnedTask(evaluator, split=None, batch_size=32, seed=0)   # doctest: +SKIP
>>> params = task.load(0)                                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from ...errors import EvaluationError
from .bcd import MicroBatches, fixed_order_sum

SUPPORTED_TASKS = ("sequence-classification", "image-classification", "causal-lm")


class LearnedTask:
    """Model, data and loss of one learned-soup run (see the module docstring)."""

    def __init__(self, evaluator: Any, *, split: str | None, batch_size: int, seed: int,
                 micro_batch_size: int | None = None):
        import torch

        if evaluator.task not in SUPPORTED_TASKS:
            raise EvaluationError(
                f"method learned: the task model {evaluator.architecture} is not supported; learned soups train "
                f"on {', '.join(SUPPORTED_TASKS)} models"
            )
        if evaluator.builder is None:
            raise EvaluationError("method learned: the evaluator has no ingredients bound; call evaluator.bind(...) first")
        self.evaluator = evaluator
        self.model = evaluator.model
        if any(p.dtype != torch.float32 for p in self.model.parameters()):
            raise EvaluationError(
                "method learned: the coefficients are trained in float32; set evaluation.dtype: float32"
            )
        self.model.eval()
        self.builder = evaluator.builder
        self.accelerator = evaluator.accelerator
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.split_name = split or evaluator.spec.split or "validation"
        self.data = evaluator.split if split is None or split == evaluator.spec.split else _load_other_split(evaluator, split)
        self.names = [name for name, _ in self.model.named_parameters()]
        self._float_buffers: dict[str, Any] | None = None

    # -- ingredients -------------------------------------------------------------------

    @property
    def num_models(self) -> int:
        return self.builder.num_ingredients

    def load(self, index: int) -> Mapping[str, Any]:
        """Ingredient ``index``'s parameters (views of the task model's, valid until the next load).

        Loaded as the evaluator loads candidates (on its device, streamed or resident under
        ``evaluation.device_memory``), with the ingredient's output-dtype values.
        """
        self.evaluator.load_ingredient(index)
        params = dict(self.model.named_parameters())
        return {name: params[name] for name in self.names}

    def residency(self, model_batch: int, simplex_rest: bool) -> Any:
        """Which ingredient differences stay on the device within ``evaluation.device_memory``
        (:func:`~.residency.plan_residency`), beside the evaluation's working memory; the evaluator's resident
        ingredient tensors give up the room the training takes."""
        from ...evaluation.device_candidates import DeviceCandidates, default_budget
        from .residency import plan_residency

        params = dict(self.model.named_parameters())
        candidates = self.evaluator.candidates
        device = next(self.model.parameters()).device
        on_device = isinstance(candidates, DeviceCandidates)
        # on the device, the evaluation keeps the working memory of its largest tensor (loads go through it)
        budget = candidates.spare_bytes if on_device else getattr(self.evaluator.spec, "device_memory", None)
        plan = plan_residency({n: params[n].numel() for n in self.names}, model_batch=model_batch,
                              budget=default_budget(device) if budget is None else int(budget), device=device,
                              simplex_rest=simplex_rest, streamable=candidates.parameter_names if on_device else set(),
                              evaluation_bytes=candidates.budget - budget if on_device else 0)
        if on_device:
            candidates.reserve(plan.training_bytes)
        return plan

    def read_parameter(self, index: int, name: str) -> Any:
        """Ingredient ``index``'s parameter ``name`` alone, as :meth:`load` puts it into the model."""
        import torch

        return self.evaluator.candidates.ingredient_parameter(index, name, torch.float32)

    def prepare_buffers(self) -> None:
        """Use the ingredients' mean for floating-point buffers (e.g. batch-norm statistics).

        Buffers are not learned; the plan averages them uniformly, and the training uses
        the same values. Costs one extra pass over the ingredients only when the model
        has persistent floating-point buffers.
        """
        import torch

        persistent = set(self.model.state_dict().keys())
        floats = [n for n, b in self.model.named_buffers() if n in persistent and b.is_floating_point()]
        if not floats:
            self._float_buffers = {}
            return
        sums: dict[str, Any] = {}
        with torch.no_grad():
            for k in range(self.num_models):
                self.load(k)
                buffers = dict(self.model.named_buffers())
                for name in floats:
                    value = buffers[name].detach().to(torch.float32)
                    sums[name] = value.clone() if name not in sums else sums[name].add_(value)
        self._float_buffers = {n: (v / self.num_models).to(dict(self.model.named_buffers())[n].dtype) for n, v in sums.items()}

    # -- data ----------------------------------------------------------------------------

    @property
    def num_examples(self) -> int:
        return len(self.data)

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def batches(self, epoch: int) -> Iterator[Any]:
        """This rank's share of each global batch of epoch ``epoch`` (``None`` for an empty share)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=generator).tolist()
        yield from self._batches(order)

    def ordered_batches(self) -> Iterator[Any]:
        """The split in its own order (for full-split losses)."""
        yield from self._batches(list(range(len(self.data))))

    def _batches(self, order: list[int]) -> Iterator[Any]:
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        rows = self.data.with_format(None)
        micro = self.micro_batch_size
        for start in range(0, len(order), self.batch_size):
            batch_rows = order[start:start + self.batch_size]
            if micro is not None:  # fixed micro-batches, dealt round-robin: the same work for any process count
                cuts = [batch_rows[i:i + micro] for i in range(0, len(batch_rows), micro)]
                yield MicroBatches([(j, self._collate(rows, cut)) for j, cut in enumerate(cuts) if j % world == rank],
                                   len(cuts))
                continue
            mine = batch_rows[rank::world]
            yield self._collate(rows, mine) if mine else None

    def _collate(self, rows: Any, indices: list[int]) -> Any:
        batch = self.evaluator.collate([rows[i] for i in indices])
        return {k: v.to(self.accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}

    # -- loss ----------------------------------------------------------------------------

    def loss(self, params: Mapping[str, Any], batch: Any) -> tuple[Any, float]:
        """``(mean loss, number of scored rows)`` of the model with ``params`` on ``batch``."""
        from torch.func import functional_call

        if batch is None:
            return None, 0.0
        if "labels" not in batch:
            raise EvaluationError("method learned: batches must hold 'labels' to compute the training loss")
        tensors = dict(params)
        if self._float_buffers:
            tensors.update(self._float_buffers)
        output = functional_call(self.model, tensors, args=(), kwargs=batch, tie_weights=True, strict=False)
        if getattr(output, "loss", None) is None:
            raise EvaluationError(
                f"method learned: {type(self.model).__name__} returned no loss for a batch with labels; "
                "learned soups need a task model that computes its loss"
            )
        labels = batch["labels"]
        if self.evaluator.task == "causal-lm":
            count = float((labels[:, 1:] != -100).sum())
        else:
            count = float(labels.shape[0])
        return output.loss, count

    def full_loss(self, params: Mapping[str, Any], reduce: Any = None) -> float:
        """Mean loss over the whole training split (example-weighted, over all ranks)."""
        import torch

        device = self.accelerator.device
        if self.micro_batch_size is not None:  # one row of terms per micro-batch, summed in a fixed order
            terms: list[Any] = []
            with torch.no_grad():
                for item in self.ordered_batches():
                    part = torch.zeros(item.total, 2, dtype=torch.float64, device=device)
                    for position, micro in item.parts:
                        loss, count = self.loss(params, micro)
                        if count:
                            part[position] = torch.tensor([float(loss) * count, count], dtype=torch.float64)
                    terms.append(part)
            total = fixed_order_sum(reduce, torch.cat(terms))
            return float(total[0] / total[1])
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad():
            for batch in self.ordered_batches():
                loss, count = self.loss(params, batch)
                if loss is not None and count:
                    total += torch.tensor([float(loss) * count, count], dtype=torch.float64, device=total.device)
        if reduce is not None:
            total = reduce(total)
        return float(total[0] / total[1])

    def reducer(self) -> Any:
        """Sum over processes (``None`` in a single process)."""
        if self.accelerator.num_processes == 1:
            return None
        return lambda tensor: self.accelerator.reduce(tensor, reduction="sum")


def check_other_split(evaluator: Any, split: str) -> None:
    """Raise ``EvaluationError`` now if ``split`` of the evaluation dataset is missing or unusable."""
    _load_other_split(evaluator, split)


def _load_other_split(evaluator: Any, split: str) -> Any:
    from ...evaluation.data import check_split, is_single_split, load_split

    if is_single_split(evaluator.spec):  # else the "held-out" split would silently be the same rows
        raise EvaluationError(
            f"method: split {split!r} cannot be taken from the evaluation dataset: it has a single split; give a "
            "DatasetDict save_to_disk folder or a Hub dataset that has it, or drop train_split / test_split")
    spec = evaluator.spec.model_copy(update={"split": split})
    data = load_split(spec)
    check_split(data, spec, evaluator.task, evaluator.config)
    return data
