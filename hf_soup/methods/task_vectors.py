"""Task arithmetic and its sparsified / sign-elected variants (TIES, DARE, breadcrumbs, DELLA).

Every ingredient k gives a task vector ``τ_k = θ_k − θ_base``. Each is optionally
sparsified (a keep mask, rescaled to its l1 norm when ``rescale``), weighted by
``weights[k]``; with sign election (TIES), only the entries agreeing with the sign of
``Σ_k w_k τ_k`` count. The soup is ``θ_base + λ · Σ_k w_k τ_k`` (divided by the sum of the
counted weights when ``normalize``). The operations and their order are MergeKit 0.1.5's
``GeneralizedTaskArithmeticMerge``, computed in float64 and rounded once.

The whole tensor is needed (top-k, random masks, l1 norms), so these methods have
``whole_tensor = True``; besides the N + 1 float32 inputs they hold float64 working
arrays of one tensor and one boolean mask per ingredient, never N float64 task vectors.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import ConfigDict, Field

from ..errors import MethodParameterError
from . import settings, sparsify
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod
from .settings import PerIngredient, Setting


class TaskVectorParams(MethodParams):
    """``weights``: one per ingredient (MergeKit's ``weight``), default 1. ``density``: the
    fraction of each task vector kept, in (0, 1]. ``lambda``: scales the merged task vector.
    ``normalize``: divide by the sum of the (counted) weights. ``rescale``: give the kept
    entries the l1 norm of the whole task vector. ``int8_mask``: accepted for MergeKit
    recipes; it changes MergeKit's memory use only, never the result.
    Numbers may be per ingredient and per tensor (see :mod:`hf_soup.methods.settings`).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    weights: PerIngredient = 1.0
    density: PerIngredient = 1.0
    lambda_: Setting = Field(1.0, alias="lambda")
    normalize: bool = False
    rescale: bool = False
    int8_mask: bool = False


class TaskVectorMethod(TensorMethod):
    """The generalized task-arithmetic merge; subclasses choose sparsification and consensus."""

    Params = TaskVectorParams
    whole_tensor = True
    uses_base = "required"
    sparsification: ClassVar[str | None] = None  # magnitude | random | magnitude_outliers | della
    consensus: ClassVar[bool] = False  # TIES sign election ("sum")

    def setup(self, context: MergeContext) -> None:
        self.count = context.num_ingredients
        self.seed = int(context.seed or 0)
        problems = self.check_parameters(self.count)
        if problems:
            raise MethodParameterError("; ".join(problems))

    def check_parameters(self, count: int | None) -> list[str]:
        """Range and length problems of the parameters (``count``: ingredients, when known)."""
        p = self.params
        problems = settings.check(p.weights, "weights", count, np.isfinite, "weights must be finite numbers")
        problems += settings.check(p.density, "density", count, lambda d: 0 < d <= 1, "density must be in (0, 1]")
        problems += settings.check(p.lambda_, "lambda", None, np.isfinite, "lambda must be a finite number")
        return problems

    def _sparsify_args(self, key: str) -> dict[str, list[Any]]:
        return {}

    def _keep(self, magnitudes: np.ndarray, info: ChunkInfo, index: int, density: float,
              extra: dict[str, Any]) -> np.ndarray | None:
        method = self.sparsification
        if method is None:
            return None
        if method == "magnitude":
            return sparsify.magnitude(magnitudes, density)
        if method == "magnitude_outliers":
            return sparsify.magnitude_outliers(magnitudes, density, extra["gamma"])
        rng = sparsify.rng_for(self.seed, info.key, index)
        if method == "random":
            return sparsify.bernoulli(magnitudes.size, density, rng)
        return sparsify.della(magnitudes, info.shape, density, extra["epsilon"], rng)

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        key = info.key
        base, inputs = chunks[0], chunks[1:]  # float32; promoted exactly where they meet float64
        count = len(inputs)
        weights = [float(w) for w in settings.per_ingredient(self.params.weights, count, key)]
        densities = settings.per_ingredient(self.params.density, count, key)
        extras = self._sparsify_args(key)
        masks: list[np.ndarray | None] = []
        factors: list[float] = []
        for index, chunk in enumerate(inputs):  # pass 1, whole tensor: masks and rescale factors
            magnitudes = chunk.astype(np.float64)
            magnitudes -= base
            np.abs(magnitudes, out=magnitudes)
            keep = self._keep(magnitudes, info, index, float(densities[index]),
                              {name: values[index] for name, values in extras.items()})
            masks.append(keep)
            factors.append(sparsify.l1_factor(magnitudes, keep) if keep is not None and self.params.rescale else 1.0)
            del magnitudes
        scale = float(settings.resolve(self.params.lambda_, key))
        out = np.empty(base.size, dtype=np.float64)
        for start in range(0, base.size, _BLOCK):  # pass 2, elementwise: in blocks, bounded scratch
            part = slice(start, start + _BLOCK)
            vectors = _TaskVectors(base[part], [x[part] for x in inputs],
                                   [None if m is None else m[part] for m in masks], factors, weights)
            out[part] = self._combine(vectors, scale)
        return out

    def _combine(self, vectors: "_TaskVectors", scale: float) -> np.ndarray:
        """θ_base + λ · (Σ_k w_k τ_k) / divisor over one block, in MergeKit's order of operations."""
        count = len(vectors.weights)
        if self.consensus:
            mixed, divisor = _elect(vectors, count)
        else:
            mixed = vectors(0)
            for index in range(1, count):
                mixed += vectors(index)
            total = sum(vectors.weights[1:], vectors.weights[0])
            divisor = 1.0 if abs(total) < 1e-8 else total
        if self.params.normalize:
            mixed /= divisor
        if scale != 1:
            mixed *= scale
        mixed += vectors.base
        return mixed

    def report(self) -> dict[str, Any]:
        return {"base_relative": True, "sparsification": self.sparsification, "sign_election": self.consensus,
                "seed": self.seed if self.sparsification in ("random", "della") else None}


_BLOCK = 1 << 20  # elements per block of the elementwise pass


class _TaskVectors:
    """The weighted, sparsified task vectors of one block: ``vectors(k)`` is ``w_k · τ_k`` (float64)."""

    def __init__(self, base: np.ndarray, inputs: list[np.ndarray], masks: list[np.ndarray | None],
                 factors: list[float], weights: list[float]):
        self.base, self.inputs, self.masks, self.factors, self.weights = base, inputs, masks, factors, weights

    def __call__(self, index: int) -> np.ndarray:
        vector = self.inputs[index].astype(np.float64)
        vector -= self.base
        if self.masks[index] is not None:
            vector *= self.masks[index]
            if self.factors[index] != 1.0:
                vector *= self.factors[index]
        vector *= self.weights[index]
        return vector


def _elect(vectors: _TaskVectors, count: int) -> tuple[np.ndarray, np.ndarray]:
    """TIES: keep the entries whose sign agrees with that of the summed task vectors; their sum and weight."""
    total = vectors(0)
    for index in range(1, count):
        total += vectors(index)
    positive = total >= 0
    del total
    mixed = divisor = None
    for index in range(count):
        vector = vectors(index)
        agree = np.where(positive, vector > 0, vector < 0)
        vector *= agree
        counted = vectors.weights[index] * agree
        if mixed is None:
            mixed, divisor = vector, counted
        else:
            mixed += vector
            divisor += counted
    divisor[divisor == 0] = 1
    return mixed, divisor
