"""The two families of soup methods and the plan that connects them to the engine.

* :class:`TensorMethod` — data-free and elementwise (uniform, weighted, AME): a function
  of the N versions of one slice of one tensor. The engine streams every tensor through
  it in bounded float32 chunks, so memory is O(N x chunk), never O(N x model).
* :class:`PlanningMethod` — data-driven (greedy, RADIN, learned): it evaluates
  candidates and returns a :class:`MergePlan`, i.e. *which* ingredients to merge with
  *which* tensor method. The engine then writes the plan like any data-free merge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from ..align import Alignment
    from ..evaluation.evaluator import Evaluator


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown parameters are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk lies: tensor ``key`` of ``shape``, flat elements ``[start, stop)``."""

    key: str
    shape: tuple[int, ...]
    start: int
    stop: int


@dataclass
class MergeContext:
    """What a method may know about the merge before it runs.

    ``scores`` holds one validation score per ingredient when an evaluation ran
    (``higher_is_better`` tells the direction), else ``None``. ``evaluator`` is the
    evaluation, bound to the ingredients, for data-driven methods (and ``compare``), else
    ``None``. ``seed`` is the recipe's seed; ``alignment`` the aligned tensors, when known.
    """

    num_ingredients: int
    refs: list[str]
    scores: list[float] | None = None
    higher_is_better: bool = True
    evaluator: Evaluator | None = None
    device: str = "cpu"
    seed: int = 0
    alignment: Alignment | None = None
    base: str | None = None  # the base model's name when the merge is relative to one


class SoupMethod(ABC):
    """Common base: a registered name, a parameter model and what the model card shows.

    ``paper`` (a link) and ``paper_title`` are cited on the card; ``card_section`` is an
    optional Jinja Markdown section the default card template renders with its variables
    (the report is ``report``). The card's description is the method module's docstring.
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    paper: ClassVar[str | None] = None
    paper_title: ClassVar[str | None] = None
    card_section: ClassVar[str | None] = None
    needs_evaluation: ClassVar[bool] = False
    #: ``"required"`` / ``"optional"``: the method merges relative to the recipe's ``base_model``;
    #: when a base is used it is ``chunks[0]`` and the ingredients follow (``"never"``: no base).
    uses_base: ClassVar[str] = "never"

    def __init__(self, params: MethodParams):
        self.params = params

    def setup(self, context: MergeContext) -> None:
        """Check the parameters against the ingredients; raise ``MethodParameterError``."""

    def report(self) -> dict[str, Any]:
        """What the soup report and model card should record about this run."""
        return {}

    def comparison_evaluator(self, evaluator: Evaluator | None) -> Evaluator | None:
        """The evaluator ``compare: true`` scores its table on, when not the one the method chose with."""
        return None


class TensorMethod(SoupMethod):
    """A data-free, elementwise merge of N aligned tensors.

    ``buffer_bytes``: the engine's total working-buffer size for this method (``None``: the
    engine's default). A compute-bound method gains nothing from large read-ahead
    buffers and can ask for smaller ones to lower peak memory.
    """

    buffer_bytes: ClassVar[int | None] = None
    #: Engine threads that may call :meth:`merge` at once (``None``: any; 1 for a method
    #: that parallelises itself, e.g. over torch threads).
    max_threads: ClassVar[int | None] = None
    #: ``True``: each call receives whole tensors (for per-tensor statistics), not chunks.
    whole_tensor: ClassVar[bool] = False
    #: ``True``: before a merge, :meth:`prepare_tensor` is called once per merged tensor (see
    #: :mod:`hf_soup.engine.prepass`), so per-tensor statistics come from streamed chunks.
    needs_prepass: ClassVar[bool] = False
    #: Threads that may run :meth:`prepare_tensor` at once (``None``: as many as the merge).
    prepass_threads: ClassVar[int | None] = None
    #: Optional GPU path, ``merge_torch(info, chunks) -> torch.Tensor``: :meth:`merge`'s operations in
    #: the same order on torch tensors, so the bytes match (see :mod:`hf_soup.engine.device`).
    merge_torch: ClassVar[Callable[..., torch.Tensor] | None] = None

    @abstractmethod
    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """Merge ``chunks`` (one flat array per ingredient, same range) into one.

        Chunks are exact copies of the stored values: float32 (float64 for float64
        checkpoints). Return float64 (or float32): the engine rounds the result once to
        the output dtype. Must be elementwise (the result for an element depends only on
        that element in each chunk and on ``info``; on its row's elements with a
        :meth:`row_length`) unless :attr:`whole_tensor` is set, so chunking never changes the
        output bytes; may be called from several threads at once.
        """

    def linear_terms(self, count: int, key: str | None = None) -> tuple[list[float], float] | None:
        """``(weights, divisor)`` when :meth:`merge` is exactly ``linear_combination(chunks, weights, divisor)``.

        The engine then sums the stored inputs one at a time (:mod:`hf_soup.engine.linear_block`)
        instead of widening all N first: the same operations, so the same bytes, faster.
        """
        return None

    def prepare_tensor(self, info: ChunkInfo, read: Callable[[int, int], Sequence[np.ndarray]]) -> None:
        """Compute what :meth:`merge` needs to know about the whole tensor ``info`` (all its elements).

        ``read(start, stop)`` returns flat elements ``[start, stop)`` of every input, as
        :meth:`merge` receives them (valid until the next call); it may be called in as many
        passes as needed. Called from several threads at once for different tensors.
        """

    def row_length(self, shape: tuple[int, ...]) -> int:
        """Each :meth:`merge` call of a tensor of ``shape`` gets whole multiples of this many elements.

        1 (the default): any range. A method whose result needs whole rows (DELLA ranks within
        each row) returns the row length: the engine then cuts items and blocks at row boundaries.
        """
        return 1

    def linear_weights(self, count: int, key: str | None = None) -> list[float] | None:
        """The ``w_k`` when the soup of tensor ``key`` is ``Σ w_k x_k`` for fixed weights, else ``None``.

        The report shows them per ingredient; an adapter soup needs them (``base + Σ w_k ΔW_k``).
        """
        return None

    @classmethod
    def is_linear(cls) -> bool:
        """Whether this method's soup is a fixed weighted sum (it overrides :meth:`linear_weights`)."""
        return cls.linear_weights is not TensorMethod.linear_weights


@dataclass
class MergePlan:
    """What a data-driven method decided: merge ``ingredients`` with ``method``.

    ``ingredients`` are indices into the resolved ingredient list; ``details`` goes
    into the report (scores, kept flags, candidates, ``num_full_evaluations``...).
    ``files`` are extra files (name -> bytes, e.g. a plot) written next to the soup.
    """

    method: TensorMethod
    ingredients: list[int]
    details: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    base: int | None = None  # the source index of the base model, streamed first (base-relative methods)

    @property
    def streamed(self) -> list[int]:
        """The source indices the engine streams, in the order the method receives them."""
        return ([self.base] if self.base is not None else []) + list(self.ingredients)


class PlanningMethod(SoupMethod):
    """A data-driven method: it decides a :class:`MergePlan` using an evaluator."""

    needs_evaluation = True

    @abstractmethod
    def plan(self, context: MergeContext, ingredients: Sequence[Any]) -> MergePlan:
        """Evaluate candidates and return the plan the engine will write."""


def plan_merge(method: SoupMethod, context: MergeContext, ingredients: Sequence[Any]) -> MergePlan:
    """Set ``method`` up and decide the plan: a data-free method merges every ingredient."""
    method.setup(context)
    if isinstance(method, PlanningMethod):
        return method.plan(context, ingredients)
    assert isinstance(method, TensorMethod)
    return MergePlan(method, list(range(len(ingredients))))
