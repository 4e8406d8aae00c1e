"""AME, Amortized Model Ensembling (Lee & Ngo, "On Defining Neural Averaging").

A soup as meta-optimization in weight space: starting from a pivot w₀, each step t takes
a batch B of ingredients, sets the gradient of w to the pivoted pseudogradient

    g_t = (1 / (N·|B|)) · Σ_{j∈B} ζ_j (w_ref − x_j),   w_ref = w_{t−1} (adaptive pivot) or w₀,

and lets an elementwise ``torch.optim`` optimizer's rule update w with the rate η_t = lr · f(t)
(Algorithm 1, §3.2–3.3; f = 1/t for ``harmonic``, 1 for ``constant``). As computed, in
float64: ``d_j = w_ref − x_j``, times ζ_j when ζ_j ≠ 1, summed over the batch in its
order, then divided by N·|B| (N: the number of ingredients).

When the identities hold (SGD without momentum or weight decay, ζ = 1, batch_size 1,
one epoch, float rounding aside):

* uniform soup, eq. 3–4: fixed pivot (``adaptive_pivot: false``), ``lr_schedule:
  constant``, lr 1 — w_N = w₀ − (1/N) Σ (w₀ − x_i) = mean of the x_i, for any pivot w₀;
* running mean, §3.1: adaptive pivot, ``harmonic``, **lr = N** — then η_t·(1/N) = 1/t,
  so w_t = w_{t−1} − (w_{t−1} − x_t)/t is the mean of x_1..x_t (the pivot drops out at
  t = 1). §3.1 derives it with the plain gradient (x − ξ) and η_t = 1/t; Algorithm 1
  adds the 1/N, which the rate must cancel. With the default lr 1 each step moves w
  only 1/(tN) of the way towards x_t: the result stays near the pivot (by default the
  uniform soup) and is *not* the running mean;
* eq. 5: adaptive pivot with a constant lr 1 is an exponential moving average with
  factor 1/N, not the soup.

Defaults: ``optimizer: sgd``, ``lr`` 1 for SGD (the GD ensembling of §3) and torch's
default for the others, ``lr_schedule: harmonic`` (App. A.2: "we decayed the learning
rate harmonically"), ``pivot: soup`` (the experiments start from the uniform soup),
``adaptive_pivot: true`` (eq. 5, Algorithm 1's w = w_{i−1}), ``epochs: 1``, ζ = 1.

Numerics. By default (``implementation: portable`` in the report) every step is AME's own
sequence of correctly rounded float64 operations (:mod:`~hf_soup.methods.ame.portable`,
one line of the optimizer's documented pseudo-code per operation, no fused multiply-add),
and the engine rounds w once to the output dtype: the bytes are the same on the CPU
(numpy) and on a GPU (torch), for any thread count, chunk size and process count, and equal
a float64 textbook Algorithm 1 rounded once. ``fused: true`` (or ``foreach: true``) runs
torch's fused (multi-tensor) optimizer kernels instead, in float32, through its functional
optimizers (:mod:`~hf_soup.methods.ame.functional`, bit-identical to ``optimizer.step()``,
without the ``Optimizer`` object whose ``step`` imports ``torch._dynamo``): faster on a GPU,
but its bytes differ between devices in the last bits.

The update is elementwise (App. A.1, "Compute Efficiency"), so the engine streams it
tensor by tensor: each block of each tensor replays one seeded schedule (order, shuffles,
batches, rates) from a fresh optimizer state, which equals running AME on the whole
flattened model at once, byte for byte. On the host the portable path runs on the
engine's worker threads, in blocks of 64 Ki elements (the whole schedule runs over one
block before the next); on a GPU each work item runs in one piece.
Memory: the engine's read buffers (16 MiB for AME) plus, per thread, the float64 arrays of
one block (w, its gradient, the optimizer's state).

Ordering by validation score and ``pivot: best`` need scores: ``MergeContext.scores`` or
the context's evaluator. Greedy AME (App. A.4) is :mod:`hf_soup.methods.ame.greedy`.

Integer and boolean tensors (buffers such as position ids) are not optimized: the engine
copies them from the reference ingredient (``output.config_from``, the first by default).

    method: {name: ame, optimizer: adam, lr: 0.01, betas: [0.8, 0.99], epochs: 5, batch_size: 2}

>>> import numpy as np
>>> ame = AmeSoup(AmeParams(lr_schedule="constant", adaptive_pivot=False, pivot=0))
>>> ame.merge(None, [np.array([0.0, 2.0], "f4"), np.array([1.0, 4.0], "f4")])   # float64, rounded by the engine
array([0.5, 3. ])
>>> xs = [np.array([0.0, 2.0], "f4"), np.array([1.0, 4.0], "f4"), np.array([5.0, 0.0], "f4")]
>>> AmeSoup(AmeParams(lr=3, pivot=0)).merge(None, xs)    # harmonic, adaptive, lr = N: the running mean
array([2., 2.])
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
from pydantic import ConfigDict, field_serializer, field_validator, model_validator

from ...errors import MethodParameterError, RecipeError
from .elementary import NumpyOps, TorchOps, ops_for
from .functional import FunctionalOptimizer
from .optim import check_optimizer, default_lr, optimizer_class_name, optimizer_group
from .portable import PortableOptimizer
from .schedule import AmeStep, build_schedule, ingredient_order
from ..base import ChunkInfo, MergeContext, MethodParams, TensorMethod

PIVOT_NAMES = ("soup", "first", "best")
# Elements per block on CPU: the ingredients' block, w, its gradient and the optimizer
# state (a few MB) stay in cache while every step of the schedule runs over them.
_CPU_BLOCK = 1 << 18
# Elements per block of the portable path on the host: the schedule runs over one block
# (w, g, the optimizer's state: 512 KiB each in float64) before the next; measured about
# as fast as 128 Ki and faster than smaller blocks, whose calls cost more than they save.
_PORTABLE_BLOCK = 1 << 16
# Blocks are multiples of this many elements (the last one is zero-padded to it).
_ALIGN = 64
_COPIED_NOTE = ("integer and boolean tensors are not optimized: they are copied unchanged from the "
                "reference ingredient (output.config_from, the first by default)")


class AmeParams(MethodParams):
    """Parameters of ``method: ame``; any other key is a keyword argument of the optimizer.

    * ``optimizer``: an elementwise ``torch.optim`` optimizer by name (sgd, adam, adamw,
      adagrad, adadelta, rmsprop, adamax, nadam, radam, asgd, rprop); default ``sgd``.
    * ``lr``: base learning rate; default 1 for sgd (the paper's GD ensembling), torch's
      default for the others. With sgd, ``harmonic`` and the adaptive pivot, ``lr`` = N
      (the number of ingredients) gives the running mean of §3.1 (see the module docstring).
    * ``lr_schedule``: ``harmonic`` (lr / t, t = optimizer step from 1; the paper's default),
      ``constant`` or ``cosine`` (from lr down towards 0 over the run).
    * ``epochs`` (default 1), ``batch_size`` (ingredients per step, default 1), ``shuffle``
      (a fresh seeded shuffle every epoch), ``seed`` (default: the recipe's seed).
    * ``pivot``: ``soup`` (default, as in the paper's experiments), ``first`` (the first
      ingredient the schedule visits: x₁ of Algorithm 1's ordered list, or the first of
      epoch 1's shuffle with ``shuffle: true``), ``best`` (the best by validation score), an ingredient index,
      or (Python API) a state dict.
    * ``adaptive_pivot``: pseudogradients against the current w (default) or the fixed pivot.
    * ``amplification``: ζ, one number or one per ingredient (default 1). A list is indexed
      like the ingredients and applies whenever that ingredient is visited; Algorithm 1
      indexes ζ_i by position in the ordered list, which is the same with ``order: given``
      and no shuffle (a choice the paper leaves open: its experiments use ζ = 1).
    * ``order``: ``given``, ``ascending`` (weakest first) or ``descending`` (strongest first)
      by validation score; needs an evaluation.
    * ``num_threads``: threads for the math on CPU: at most this many engine threads on the
      default path (default: the engine's ``--threads``); torch's intra-op threads with
      ``fused: true`` (default: all cores but one, fed by one engine thread).
    * Optimizer arguments, e.g. ``betas``, ``eps``, ``weight_decay``, ``momentum``, ``rho``,
      ``fused`` (default off: AME's portable float64 steps, the same bytes on every device
      and equal to a textbook Algorithm 1; ``fused: true``: torch's fused kernels in
      float32 where they exist, faster on a GPU and different in the last bits).
    """

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    optimizer: str = "sgd"
    lr: float | None = None
    lr_schedule: Literal["harmonic", "constant", "cosine"] = "harmonic"
    epochs: int = 1
    batch_size: int = 1
    shuffle: bool = False
    seed: int | None = None
    pivot: Any = "soup"
    adaptive_pivot: bool = True
    amplification: float | list[float] = 1.0
    order: Literal["given", "ascending", "descending"] = "given"
    num_threads: int | None = None

    @field_validator("lr")
    @classmethod
    def _lr(cls, value: float | None) -> float | None:
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"must be a number > 0, got {value}; the paper uses 1 for SGD and 1e-4 to 0.1 for Adam(W)")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 (passes over the ingredients), got {value}")
        return value

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 (ingredients per optimizer step), got {value}")
        return value

    @field_validator("num_threads")
    @classmethod
    def _num_threads(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("amplification")
    @classmethod
    def _amplification(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values or not all(np.isfinite(v) and v > 0 for v in values):
            raise ValueError("ζ must be a number > 0, or a list of one number > 0 per ingredient")
        return value

    @field_validator("pivot")
    @classmethod
    def _pivot(cls, value: Any) -> Any:
        if isinstance(value, str) and value in PIVOT_NAMES:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"an ingredient index must be >= 0, got {value}")
            return value
        if isinstance(value, Mapping) and value:
            for key, tensor in value.items():
                if not (isinstance(tensor, np.ndarray) or hasattr(tensor, "detach")):
                    raise ValueError(f"the pivot state dict entry {key!r} is a {type(tensor).__name__}, not a tensor")
            return value
        raise ValueError(f"must be soup, first, best, an ingredient index or (Python API) a non-empty state dict; "
                         f"got {value!r}")

    @field_serializer("pivot")
    def _dump_pivot(self, value: Any) -> Any:
        return f"<state dict of {len(value)} tensors>" if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _optimizer(self) -> "AmeParams":
        optimizer_class_name(self.optimizer)
        lr = self.lr if self.lr is not None else default_lr(self.optimizer)
        check_optimizer(self.optimizer, lr, self.optimizer_kwargs, method_fields=list(type(self).model_fields))
        return self

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        """The optimizer's own keyword arguments (every key that is not an AME parameter)."""
        return dict(self.model_extra or {})


class AmeSoup(TensorMethod):
    """Amortized Model Ensembling with any elementwise ``torch.optim`` optimizer.

    >>> import numpy as np
    >>> ame = AmeSoup(AmeParams(optimizer="adam", lr=0.1, epochs=3, batch_size=2))
    >>> ame.setup(MergeContext(2, ["a", "b"]))
    >>> ame.merge(None, [np.zeros(1, "f4"), np.ones(1, "f4")]).shape
    (1,)
    """

    name = "ame"
    Params = AmeParams
    # AME is compute-bound (every element goes through epochs x N / batch_size optimizer
    # steps), so a smaller read-ahead than the engine's default costs no time and saves memory.
    buffer_bytes = 16 * 1024 * 1024
    max_threads: int | None = 1  # on the CPU, AME runs its blocks on torch's own threads (``num_threads``)
    paper = None  # no stable link recorded
    paper_title = "On Defining Neural Averaging (Su Hyeong Lee & Richard Ngo)"

    def __init__(self, params: AmeParams):
        super().__init__(params)
        self._schedule: list[AmeStep] | None = None
        self._order: list[int] = []
        self._pivot: Any = None
        self._pivot_keys: dict[str, str] = {}
        self._zetas: list[float] = []
        self._seed: int = 0
        self._device = "cpu"
        self._lr = params.lr if params.lr is not None else default_lr(params.optimizer)
        self._arguments = check_optimizer(params.optimizer, self._lr, params.optimizer_kwargs)
        self._run_args: dict[str, Any] = {}
        self._implementation = ""
        self._threads = 1
        self._validation_scores: list[float] | None = None
        # Ordering by score or a ``best`` pivot needs validation scores (an evaluation).
        self.needs_evaluation = params.order != "given" or params.pivot == "best"

    # -- planning (before any tensor is read) -------------------------------------------

    def setup(self, context: MergeContext) -> None:
        p = self.params
        count = context.num_ingredients
        if p.batch_size > count:
            raise MethodParameterError(f"method.batch_size: {p.batch_size} is more than the {count} ingredients; "
                                       f"use at most {count}")
        zetas = p.amplification if isinstance(p.amplification, list) else [p.amplification] * count
        if len(zetas) != count:
            raise MethodParameterError(f"method.amplification: got {len(zetas)} values for {count} ingredients; "
                                       "give one number, or one per ingredient")
        scores, higher_is_better = self._scores(context)
        self._validation_scores = scores if self.needs_evaluation else None
        if p.order != "given" and p.shuffle:
            raise MethodParameterError(f"method.order: {p.order} has no effect with shuffle: true (every epoch "
                                       "is shuffled); use one of them")
        if isinstance(p.pivot, int) and not isinstance(p.pivot, bool) and p.pivot >= count:
            raise MethodParameterError(f"method.pivot: {p.pivot} is not an ingredient index (there are {count}); "
                                       f"use 0 to {count - 1}")
        try:
            order = ingredient_order(count, p.order, scores, higher_is_better)
        except ValueError as error:
            raise MethodParameterError(f"method.order: {error}") from None
        self._order = order
        self._seed = p.seed if p.seed is not None else context.seed
        schedule = build_schedule(count, epochs=p.epochs, batch_size=p.batch_size, shuffle=p.shuffle,
                                  seed=self._seed, order=order, lr=self._lr, lr_schedule=p.lr_schedule)
        # ``first`` is the first ingredient the schedule visits (after the epoch-1 shuffle).
        self._pivot = self._resolve_pivot(context, [schedule[0].batch[0]], scores, higher_is_better)
        self._zetas = [float(z) for z in zetas]
        self._device = self._check_device(context.device)
        self._run_args, self._implementation = self._run_arguments(self._device)
        # The portable path runs on the engine's threads (numpy releases the interpreter lock);
        # torch's kernels on the CPU run on torch's own threads, fed by one engine thread. On a
        # GPU, several engine threads may feed it at once (reads overlap the steps).
        if self._device != "cpu":
            self.max_threads = None
        elif self._implementation == "portable":
            self.max_threads = p.num_threads
        else:
            self.max_threads = 1
        self._threads = p.num_threads or max(1, (os.cpu_count() or 1) - 1)
        self._schedule = schedule

    def _scores(self, context: MergeContext) -> tuple[list[float] | None, bool]:
        """Validation scores when the order or the pivot needs them: the context's, or the evaluator's."""
        if not self.needs_evaluation:
            return context.scores, context.higher_is_better
        if context.scores is not None:
            return list(context.scores), context.higher_is_better
        evaluator = context.evaluator
        if evaluator is not None and evaluator.builder is not None:
            return list(evaluator.ingredient_scores()), bool(evaluator.higher_is_better)
        p = self.params
        field, value, alternative = (("order", p.order, "order: given") if p.order != "given"
                                     else ("pivot", p.pivot, "pivot: soup"))
        raise MethodParameterError(f"method.{field}: {value} ranks the ingredients by validation score, so it needs "
                                   f"an evaluation; configure one (evaluation: ...) or use {alternative}")

    def _resolve_pivot(self, context: MergeContext, visited: list[int], scores: list[float] | None,
                       higher_is_better: bool) -> Any:
        """w₀: ``visited[0]`` (the first ingredient of the schedule) for ``first``, else per ``pivot``."""
        pivot = self.params.pivot
        if pivot == "soup":
            return "soup"
        if pivot == "first":
            return visited[0]
        if pivot == "best":
            quality = [s if higher_is_better else -s for s in scores]
            return max(range(len(quality)), key=lambda i: (quality[i], -i))
        if isinstance(pivot, int):
            return pivot
        return self._open_pivot_state_dict(pivot, context)

    def _open_pivot_state_dict(self, state_dict: Mapping[str, Any], context: MergeContext) -> Any:
        from ...align import canonical_key
        from ...io.torch_source import StateDictSource

        source = StateDictSource(state_dict, origin="method.pivot")
        self._pivot_keys = {canonical_key(k): k for k in source.keys()}
        alignment = context.alignment
        if alignment is not None:
            problems = []
            for tensor in alignment.tensors:
                if tensor.action != "merge":
                    continue
                own = self._pivot_keys.get(tensor.key)
                if own is None:
                    problems.append(f"{tensor.key} is missing")
                elif source.meta(own).shape != tensor.shape:
                    problems.append(f"{tensor.key} has shape {list(source.meta(own).shape)}, "
                                    f"the ingredients {list(tensor.shape)}")
            if problems:
                raise MethodParameterError(f"method.pivot: the pivot state dict does not match the ingredients "
                                           f"({len(problems)} problem(s), first: {'; '.join(problems[:5])}); give the "
                                           "state dict of a model of the same architecture, e.g. model.state_dict()")
        return source

    @staticmethod
    def _check_device(device: str) -> str:
        if device in (None, "", "cpu"):
            return "cpu"
        import torch

        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise RecipeError(f"device: {device!r} was asked for but torch sees no CUDA device; use device: cpu")
        return str(device)

    @property
    def schedule(self) -> list[AmeStep]:
        """Every optimizer step this merge runs (after :meth:`setup`)."""
        if self._schedule is None:
            raise RuntimeError("AmeSoup.setup(context) must run before the schedule exists")
        return list(self._schedule)

    @property
    def pivot_ingredient(self) -> int | None:
        """The ingredient w₀ is copied from, or ``None`` (soup or state-dict pivot)."""
        return self._pivot if isinstance(self._pivot, int) else None

    def restrict(self, steps: Sequence[AmeStep]) -> None:
        """Run only ``steps`` (a subsequence of :attr:`schedule`; greedy AME's accepted steps).

        Each keeps its own learning rate; the optimizer state evolves over the kept steps
        only, as if each rejected step had been undone.
        """
        self._schedule = list(steps)

    def _run_arguments(self, device: str) -> tuple[dict[str, Any], str]:
        """The optimizer's full parameter group, and which implementation runs.

        By default (``portable``) AME's own float64 steps (:mod:`.portable`): correctly
        rounded operations only, the same bytes on every device. ``fused: true`` (or
        ``foreach: true``) runs torch's fused (multi-tensor) kernels in float32 instead:
        faster on a GPU, and different in the last bits from one device to another.
        """
        group = optimizer_group(self.params.optimizer, self._lr, dict(self.params.optimizer_kwargs))
        if group.get("fused"):
            return group, "fused"
        if group.get("foreach"):
            return group, "foreach"
        return group, "portable"

    # -- the elementwise merge ----------------------------------------------------------

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        if self._schedule is None:
            self.setup(MergeContext(len(chunks), [f"ingredient {i}" for i in range(len(chunks))]))
        if self._implementation == "portable":
            return self._merge_portable(info, chunks, ops_for(self._device))
        return self._merge_torch_optim(info, chunks)

    # -- the default: correctly rounded float64 steps (``portable``), numpy or torch ------

    def _merge_portable(self, info: ChunkInfo | None, chunks: Sequence[np.ndarray], ops: Any) -> np.ndarray:
        """w for these chunks, in float64, stepped by :mod:`.portable` with ``ops`` (numpy or torch).

        On the host the chunk runs in blocks of ``_PORTABLE_BLOCK`` elements that stay in the
        core's cache across the whole schedule; on a device in one piece. Every operation is
        correctly rounded, so neither the block size nor the device changes a bit.
        """
        length = int(chunks[0].size)
        xs = [np.ascontiguousarray(c).reshape(-1) for c in chunks]
        if length == 0:
            return np.empty(0, dtype=np.float64)
        buffers = self._workspace(ops)
        if isinstance(ops, NumpyOps):
            result = np.empty(length, dtype=np.float64)
            for start in range(0, length, _PORTABLE_BLOCK):
                stop = min(length, start + _PORTABLE_BLOCK)
                self._run_portable(ops, result[start:stop], [x[start:stop] for x in xs], info, start, buffers)
            return result
        import torch

        with warnings.catch_warnings():  # read-only inputs: AME never writes to them
            warnings.simplefilter("ignore", UserWarning)
            device_xs = [torch.from_numpy(x).to(ops.device) for x in xs]
        values = ops.empty(length)
        self._run_portable(ops, values, device_xs, info, 0, buffers)
        return values.cpu().numpy()

    def _workspace(self, ops: Any) -> dict[str, Any]:
        """This thread's reusable arrays for ``ops`` (engine threads merge blocks concurrently)."""
        local = self.__dict__.setdefault("_local", threading.local())
        spaces = local.__dict__.setdefault("spaces", {})
        return spaces.setdefault((type(ops).__name__, ops.device), {})

    def _run_portable(self, ops: Any, values: Any, xs: list[Any], info: ChunkInfo | None, offset: int,
                      buffers: dict[str, Any]) -> None:
        """Every step of the schedule on one block; ``values`` (float64) ends up holding w."""
        count = len(values)
        self._fill_pivot_portable(ops, values, xs, info, offset, buffers)
        reference = values
        if not self.params.adaptive_pivot:
            reference = ops.copy(_sized(ops, buffers, "pivot", count), values)
        grad, scratch = _sized(ops, buffers, "grad", count), _sized(ops, buffers, "pseudo", count)
        optimizer = PortableOptimizer(self.params.optimizer, self._run_args, ops, count, buffers)
        num, zetas = len(xs), self._zetas
        for step in self._schedule:
            # g = Σ_{j∈B} ζ_j (w_ref − x_j) / (N |B|)
            for position, j in enumerate(step.batch):
                target = grad if position == 0 else scratch
                ops.sub(reference, xs[j], target)
                if zetas[j] != 1.0:
                    ops.mul(target, zetas[j], target)
                if position:
                    ops.add(grad, target, grad)
            ops.div(grad, float(num * len(step.batch)), grad)
            optimizer.step(values, grad, step.lr)

    def _fill_pivot_portable(self, ops: Any, values: Any, xs: list[Any], info: ChunkInfo | None, offset: int,
                             buffers: dict[str, Any]) -> None:
        """w₀ for this block, in float64: the soup Σx / N, an ingredient, or the state dict's values."""
        pivot = self._pivot
        if pivot == "soup":
            ops.copy(values, xs[0])
            for x in xs[1:]:
                ops.add(values, x, values)
            ops.div(values, float(len(xs)), values)
        elif isinstance(pivot, int):
            ops.copy(values, xs[pivot])
        else:
            count = len(values)
            host = buffers.get("pivot_host")
            if host is None or host.size < count:
                host = buffers["pivot_host"] = np.empty(count, dtype=np.float32)
            own = self._pivot_source_key(pivot, info)
            read = pivot.read_float32(own, info.start + offset, info.start + offset + count, host[:count])
            if isinstance(ops, NumpyOps):
                ops.copy(values, read)
            else:
                import torch

                ops.copy(values, torch.from_numpy(read).to(ops.device))

    # -- ``fused: true`` / ``foreach: true``: torch's own optimizer kernels, float32 ------

    def _merge_torch_optim(self, info: ChunkInfo | None, chunks: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        length = int(chunks[0].size)
        if length == 0:
            return np.empty(0, dtype=np.float32)
        with warnings.catch_warnings():  # read-only inputs: AME never writes to them
            warnings.simplefilter("ignore", UserWarning)
            xs = [torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32).reshape(-1)) for c in chunks]
        if self._device != "cpu":
            return self._torch_optim_on_device(info, [x.to(self._device) for x in xs]).cpu().numpy()
        result = np.empty(length, dtype=np.float32)
        with _torch_threads(self._threads):
            self._torch_optim_into(torch.from_numpy(result), xs, info, _CPU_BLOCK)
        return result

    def _torch_optim_on_device(self, info: ChunkInfo | None, xs: list[Any]) -> Any:
        import torch

        out = torch.empty(len(xs[0]), dtype=torch.float32, device=xs[0].device)
        self._torch_optim_into(out, [x.to(torch.float32) for x in xs], info, max(len(out), 1))
        return out

    def _torch_optim_into(self, out: Any, xs: list[Any], info: ChunkInfo | None, block: int) -> None:
        """torch's optimizer kernels over ``out``'s elements, ``block`` at a time (in cache on the CPU)."""
        length = len(out)
        aligned = length - length % _ALIGN
        for start in range(0, aligned, block):
            stop = min(aligned, start + block)
            self._run(out[start:stop], [x[start:stop] for x in xs], info, start, stop - start)
        if aligned < length:
            self._run_padded(out, xs, info, aligned, length)

    def merge_torch(self, info: ChunkInfo, chunks: Sequence[Any]) -> Any:
        """:meth:`merge` on the chunks' device (the engine's GPU path: pinned buffers, a stream per thread).

        The default returns float64 w computed by the same correctly rounded operations as the
        host, so the engine's rounding there gives the host's bytes; ``fused`` returns float32.
        """
        if self._schedule is None:
            self.setup(MergeContext(len(chunks), [f"ingredient {i}" for i in range(len(chunks))]))
        xs = [c.reshape(-1) for c in chunks]
        if self._implementation != "portable":
            return self._torch_optim_on_device(info, xs)
        ops = TorchOps(str(xs[0].device))
        values = ops.empty(len(xs[0]))
        if len(values):
            self._run_portable(ops, values, xs, info, 0, self._workspace(ops))
        return values

    def _run_padded(self, out: Any, xs: list[Any], info: ChunkInfo | None, start: int, stop: int) -> None:
        """Run the last ``stop - start`` (< 64) elements inside zero-padded 64-element buffers.

        Every element then goes through the same vectorised kernels, whatever its position:
        torch's fused optimizers compute a block's last few elements with scalar code that
        can round differently, which would make the result depend on the chunking.
        """
        import torch

        count = stop - start
        padded = [torch.zeros(_ALIGN, dtype=out.dtype, device=out.device) for _ in xs]
        for buffer, x in zip(padded, xs):
            buffer[:count] = x[start:stop]
        values = torch.zeros(_ALIGN, dtype=out.dtype, device=out.device)
        self._run(values, padded, info, start, count)
        out[start:stop] = values[:count]

    def _run(self, values: Any, xs: list[Any], info: ChunkInfo | None, offset: int, count: int) -> None:
        """Run every step of the schedule on one block; ``values`` (a view) ends up holding w.

        ``count``: how many leading elements are real (the rest is padding).
        """
        import torch

        self._fill_pivot(values, xs, info, offset, count)
        reference = values if self.params.adaptive_pivot else values.clone()
        grad = torch.empty_like(values)
        # torch's functional optimizer, as ``optimizer.step()`` calls it (bit-identical), on
        # ``values`` in place: no ``Optimizer`` object, so ``torch._dynamo`` is never imported.
        optimizer = FunctionalOptimizer(self.params.optimizer, values, grad, self._run_args)
        num = len(xs)
        for step in self._schedule:
            self._pseudogradient(grad, reference, xs, step.batch, num)
            optimizer.step(step.lr)

    def _fill_pivot(self, values: Any, xs: list[Any], info: ChunkInfo | None, offset: int, count: int) -> None:
        """Write w₀ for this block into ``values`` (its first ``count`` elements are real)."""
        import torch

        pivot = self._pivot
        if pivot == "soup":
            values.copy_(xs[0])
            for x in xs[1:]:
                values.add_(x)
            values.div_(len(xs))
            return
        if isinstance(pivot, int):
            values.copy_(xs[pivot])
            return
        own = self._pivot_source_key(pivot, info)
        start = info.start + offset
        if values.device.type == "cpu":
            pivot.read_float32(own, start, start + count, values[:count].numpy())
        else:
            buffer = np.empty(count, dtype=np.float32)
            values[:count].copy_(torch.from_numpy(pivot.read_float32(own, start, start + count, buffer)))

    def _pivot_source_key(self, pivot: Any, info: ChunkInfo | None) -> str:
        """The pivot state dict's own name for ``info``'s tensor, checked against its shape."""
        key = info.key if info is not None else None
        own = self._pivot_keys.get(key) if key is not None else None
        if own is None:
            raise MethodParameterError(f"method.pivot: the pivot state dict has no tensor {key!r}; "
                                       "give the state dict of a model of the same architecture")
        if pivot.meta(own).numel != math.prod(info.shape):
            raise MethodParameterError(f"method.pivot: tensor {key!r} has shape {list(pivot.meta(own).shape)}, "
                                       f"the ingredients {list(info.shape)}")
        return own

    def _pseudogradient(self, grad: Any, reference: Any, xs: list[Any], batch: tuple[int, ...], count: int) -> None:
        """``grad ← Σ_{j∈B} ζ_j (reference − x_j) / (N |B|)``, in place."""
        import torch

        zetas = self._zetas
        if len(batch) == 1:
            (j,) = batch
            torch.sub(reference, xs[j], out=grad)
            grad.mul_(zetas[j] / count)
            return
        first, second, rest = batch[0], batch[1], batch[2:]
        if zetas[first] == zetas[second] == 1.0:
            torch.add(xs[first], xs[second], out=grad)
        else:
            torch.mul(xs[first], zetas[first], out=grad)
            grad.add_(xs[second], alpha=zetas[second])
        for j in rest:
            grad.add_(xs[j], alpha=zetas[j])
        grad.sub_(reference, alpha=sum(zetas[j] for j in batch))  # Σζx − Σζ·w_ref
        grad.mul_(-1.0 / (count * len(batch)))

    # -- reporting ------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        p = self.params
        pivot = p.pivot
        if isinstance(pivot, Mapping):
            pivot = "state dict"
        details: dict[str, Any] = {
            "optimizer": optimizer_class_name(p.optimizer),
            "optimizer_args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._arguments.items()},
            "implementation": self._implementation or None,
            "lr_schedule": p.lr_schedule,
            "epochs": p.epochs,
            "batch_size": p.batch_size,
            "shuffle": p.shuffle,
            "seed": self._seed,
            "pivot": pivot,
            "adaptive_pivot": p.adaptive_pivot,
            "amplification": p.amplification,
            "order": p.order,
            "non_float_tensors": _COPIED_NOTE,
        }
        if isinstance(self._pivot, int):
            details["pivot_ingredient"] = self._pivot
        if self._validation_scores is not None:
            details["scores"] = list(self._validation_scores)
        details["card_parameters"] = {k: details[k] for k in (
            "optimizer", "optimizer_args", "lr_schedule", "epochs", "batch_size", "shuffle", "seed", "pivot",
            "adaptive_pivot", "amplification", "order")}
        if self._schedule is not None:
            details["ingredient_order"] = self._order
            details["num_steps"] = len(self._schedule)
            details["epoch_orders"] = [list(s) for s in self._epoch_orders()]
        return details

    def _epoch_orders(self) -> list[list[int]]:
        orders: dict[int, list[int]] = {}
        for step in self._schedule or []:
            orders.setdefault(step.epoch, []).extend(step.batch)
        return [orders[e] for e in sorted(orders)]


def _sized(ops: Any, buffers: dict[str, Any], name: str, count: int) -> Any:
    """``buffers[name]`` (float64, grown to ``count`` elements when shorter), its first ``count`` elements."""
    array = buffers.get(name)
    if array is None or len(array) < count:
        array = buffers[name] = ops.empty(count)
    return array[:count]


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run torch ops on ``count`` intra-op threads, restoring the previous setting after."""
    import torch

    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
