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
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict


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
    evaluation object for data-driven methods, else ``None``.
    """

    num_ingredients: int
    refs: list[str]
    scores: list[float] | None = None
    higher_is_better: bool = True
    evaluator: Any = None
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # the base model's name when the merge is relative to one


class SoupMethod(ABC):
    """Common base: a registered name, a parameter model and a paper reference."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    paper: ClassVar[str | None] = None
    needs_evaluation: ClassVar[bool] = False

    def __init__(self, params: MethodParams):
        self.params = params

    def setup(self, context: MergeContext) -> None:
        """Check the parameters against the ingredients; raise ``MethodParameterError``."""

    def report(self) -> dict[str, Any]:
        """What the soup report and model card should record about this run."""
        return {}


class TensorMethod(SoupMethod):
    """A data-free, elementwise merge of N aligned tensors.

    ``buffer_bytes``: the engine's total read-buffer size for this method (``None``: the
    engine's default). A compute-bound method gains nothing from large read-ahead
    buffers and can ask for smaller ones to lower peak memory.
    """

    buffer_bytes: ClassVar[int | None] = None
    #: ``True``: each call receives whole tensors (one chunk per tensor), for methods that
    #: need a per-tensor statistic (a quantile, a random mask, a norm or an angle).
    whole_tensor: ClassVar[bool] = False
    #: ``"required"`` / ``"optional"``: the method merges relative to the recipe's ``base_model``;
    #: when a base is used it is ``chunks[0]`` and the ingredients follow.
    uses_base: ClassVar[str] = "never"

    @abstractmethod
    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """Merge ``chunks`` (one flat float32 array per ingredient, same range) into one.

        Must be elementwise: the result for an element depends only on that element in
        each chunk (and on ``info``), so chunking never changes the output bytes — unless
        the method sets ``whole_tensor``, and then each chunk is the whole tensor. The result
        may be float32, or float64 to be rounded once to the output dtype.
        """


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
