"""Task arithmetic and its sparsified / sign-elected variants (TIES, DARE, breadcrumbs, DELLA).

Every ingredient k gives a task vector ``τ_k = θ_k − θ_base``. Each is optionally
sparsified (a keep mask, rescaled to its l1 norm when ``rescale``), weighted by
``weights[k]``; with sign election (TIES), only the entries agreeing with the sign of
``Σ_k w_k τ_k`` count. The soup is ``θ_base + λ · Σ_k w_k τ_k`` (divided by the sum of the
counted weights when ``normalize``). The operations and their order are MergeKit 0.1.5's
``GeneralizedTaskArithmeticMerge``, computed in float64 and rounded once.

Masks need statistics of the whole tensor (top-k thresholds, l1 norms). They are computed
in a pre-pass over streamed chunks (:mod:`hf_soup.engine.prepass`): an exact rank selection
gives each magnitude mask as a bound ``(value, position)`` (ties by position) — usually in
one pass, from a band a strided sample guessed (:class:`~.streamed_stats.BandSelection`) —,
numpy's own summation order gives the l1 norms, and DARE's masks are drawn from the
generator advanced to each chunk's first element (kept as bits between the count and the
l1 pass). The merge then streams chunk by chunk like an elementwise soup
(:mod:`~.task_vector_block`), with the bytes a whole-tensor computation gives. DELLA's
per-row ranks are decided on work items of whole rows (:mod:`~.della_rows`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import ConfigDict, Field

from ..errors import MethodParameterError
from . import settings, sparsify
from . import task_vector_block as block
from .base import ChunkInfo, MergeContext, MethodParams, TensorMethod
from .streamed_stats import BandSelection, PairwiseSum, RankSelection, first_ranked
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
    needs_prepass = True
    uses_base = "required"
    sparsification: ClassVar[str | None] = None  # magnitude | random | magnitude_outliers | della
    consensus: ClassVar[bool] = False  # TIES sign election ("sum")

    def setup(self, context: MergeContext) -> None:
        self.count = context.num_ingredients
        self.seed = int(context.seed or 0)
        self._masks: dict[str, list[_MaskRule | None]] = {}
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

    def _tensor_settings(self, key: str, count: int) -> tuple[list[float], list[float], dict[str, list[Any]]]:
        weights = [float(w) for w in settings.per_ingredient(self.params.weights, count, key)]
        densities = [float(d) for d in settings.per_ingredient(self.params.density, count, key)]
        return weights, densities, self._sparsify_args(key)

    def prepare_tensor(self, info: ChunkInfo, read) -> None:
        """The mask rule of each ingredient's task vector of tensor ``info``, from streamed passes."""
        if self.sparsification is None:
            return
        size = info.stop
        count = self.count
        _, densities, extras = self._tensor_settings(info.key, count)
        rules = [_MaskRule.plan(self.sparsification, size, densities[k], {n: v[k] for n, v in extras.items()},
                                sparsify.rng_for(self.seed, info.key, k) if self.sparsification == "random" else None)
                 for k in range(count)]
        step = _PREPASS_CHUNK
        magnitudes = _Magnitudes()
        if self.sparsification in ("magnitude", "magnitude_outliers") and size >= _SPECULATE_FROM:
            _speculate(rules, size, read, step, magnitudes)  # one pass where a sample guessed well
        while any(rule is not None and rule.pending for rule in rules):  # rank selections, a pass each
            for rule in rules:
                if rule is not None:
                    rule.begin_pass()
            for start in range(0, size, step):
                magnitudes.read(read, start, min(size, start + step))
                for index, rule in enumerate(rules):
                    if rule is not None and rule.pending:
                        rule.observe(start, magnitudes(index))
            for rule in rules:
                if rule is not None:
                    rule.end_pass()
        if self.params.rescale and any(rule is not None for rule in rules):
            pack = size * count <= 8 * _PACKED_BYTES
            for rule in rules:  # DARE: how many entries are kept decides numpy's summation tree
                if rule is not None:
                    rule.count_kept(size, step, pack)
            sums = [None if rule is None else (PairwiseSum(size), PairwiseSum(rule.kept)) for rule in rules]
            for start in range(0, size, step):
                stop = min(size, start + step)
                magnitudes.read(read, start, stop)
                for index, (rule, pair) in enumerate(zip(rules, sums)):
                    if rule is not None:
                        values = magnitudes(index)
                        pair[0].add(values)
                        pair[1].add(np.compress(rule.keep(start, stop, values), values))  # (4x faster than values[keep])
            for rule, pair in zip(rules, sums):
                if rule is not None:
                    rule.unpack()
                    rule.factor = _l1_factor(pair[0].result(), pair[1].result())
        self._masks[info.key] = rules

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        base, inputs = chunks[0], chunks[1:]
        count = len(inputs)
        weights, _, _ = self._tensor_settings(info.key, count)
        rules = self._masks.get(info.key) if self.sparsification is not None else [None] * count
        if rules is None:
            raise AssertionError(f"{self.name}: tensor {info.key} was merged before its pre-pass "
                                 "(hf_soup.engine.prepass.prepass)")
        start, stop = info.start, info.stop

        def fill(index: int, differences: np.ndarray, out: np.ndarray) -> None:
            rule = rules[index]
            if isinstance(rule, _MaskRule):
                rule.fill(start, stop, differences, out, block.SCRATCH)
            else:  # a subclass's rule (``keep(start, stop, magnitudes or None)``, ``needs_values``, ``factor``)
                out[...] = rule.keep(start, stop, np.abs(differences) if rule.needs_values else None)  # type: ignore

        keeps = [None if rule is None else fill for rule in rules]
        factors = [rule.factor if rule is not None and self.params.rescale else 1.0 for rule in rules]
        vectors = block.block_vectors(base, inputs, keeps, factors, weights)
        scale = float(settings.resolve(self.params.lambda_, info.key))
        if self.consensus:
            return block.finish(block.elect_and_sum(vectors, weights, self.params.normalize), vectors, None, scale)
        total = sum(weights[1:], weights[0])
        divisor = (1.0 if abs(total) < 1e-8 else total) if self.params.normalize else None
        return block.finish(block.plain_sum(vectors), vectors, divisor, scale)

    def _merge_whole(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        """The merge of one whole tensor (methods whose masks need it: DELLA's per-row ranks)."""
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
_PREPASS_CHUNK = 1 << 18  # elements per chunk of the pre-pass


_PACKED_BYTES = 32 << 20  # DARE keeps a tensor's masks as bits up to this size (all ingredients)
_SPECULATE_FROM = 1 << 16  # tensors this large first try a one-pass selection from a sample
_SAMPLE_RUN = 1024  # contiguous elements per sampled run
_SAMPLE_RUNS = 256  # runs sampled at most (and at most 1/16 of the tensor)
_SPREAD = 3.0  # the band: the sample's rank ± this many standard deviations of a sample quantile
_BAND_CAP = 100  # at most 1/100 of the tensor's elements gathered per selection (bounds memory) ...
_BAND_MIN = 1 << 16  # ... or this many (small tensors' samples are small: their bands are wider)


class _Magnitudes:
    """``|θ_k − θ_base|`` in float64 of the chunk last read, as the whole-tensor computation forms it.

    ``read`` widens the base once; ``self(k)`` is one ``float32 − float64`` pass and an
    ``abs`` into a per-thread buffer (valid until the next call).
    """

    def read(self, read, start: int, stop: int) -> list[np.ndarray]:
        self.chunks = read(start, stop)
        self.base = block.SCRATCH.get("prepass_base", np.float64, stop - start)
        np.copyto(self.base, self.chunks[0])
        return self.chunks

    def __call__(self, index: int) -> np.ndarray:
        out = block.SCRATCH.get("prepass_magnitudes", np.float64, self.base.size)
        np.subtract(self.chunks[index + 1], self.base, out=out)
        return np.abs(out, out=out)


def _speculate(rules: list["_MaskRule | None"], size: int, read, step: int, magnitudes: _Magnitudes) -> None:
    """Rank selections in one pass where a strided sample bands the rank's value (the others are left pending)."""
    live = [(index, rule) for index, rule in enumerate(rules) if rule is not None and rule.pending]
    if not live:
        return
    runs = max(2, min(_SAMPLE_RUNS, size // (16 * _SAMPLE_RUN)))
    samples: dict[int, list[np.ndarray]] = {index: [] for index, _ in live}
    for run in range(runs):
        start = run * (size - _SAMPLE_RUN) // (runs - 1)
        magnitudes.read(read, start, start + _SAMPLE_RUN)
        for index, _ in live:
            samples[index].append(magnitudes(index).copy())
    for index, rule in live:
        rule.speculate(np.concatenate(samples.pop(index)), max(_BAND_MIN, size // _BAND_CAP))
    for start in range(0, size, step):
        stop = min(size, start + step)
        magnitudes.read(read, start, stop)
        scratch = block.SCRATCH.get("prepass_before", np.bool_, stop - start)
        inside = block.SCRATCH.get("prepass_inside", np.bool_, stop - start)
        for index, rule in live:
            values = magnitudes(index)
            for selection in rule.selections:
                selection.observe(start, values, scratch, inside)
    for index, rule in live:
        for selection in rule.selections:
            selection.end_pass()
            if selection.pending_chunk is not None:  # a band of one value: the chunk of its occurrence, again
                magnitudes.read(read, *selection.pending_chunk[:2])
                selection.locate(magnitudes(index))
        rule.settle()


def _l1_factor(before: float, after: float) -> float:
    """:func:`~hf_soup.methods.sparsify.l1_factor` from the two sums."""
    if before < sparsify._EPS or after < sparsify._EPS:
        return 1.0
    return before / after


class _MaskRule:
    """Which entries of one ingredient's task vector of one tensor are kept, decided chunk by chunk.

    ``magnitude``: the first ``k`` in (magnitude descending, position) order, i.e. those at or
    before the bound at rank ``k − 1``; ``magnitude_outliers``: ascending ranks in ``[lo, hi)``;
    ``random``: Bernoulli(``density``) draws of the generator advanced to the chunk's start.
    """

    def __init__(self, kind: str, size: int, density: float):
        self.kind, self.size, self.density = kind, size, density
        self.selections: list[RankSelection | BandSelection] = []
        self.ranks: list[int] = []
        self.bounds: list[tuple[float, int] | None] = []
        self.kept = 0
        self.factor = 1.0
        self.empty = False
        self.rng: np.random.Generator | None = None
        self.packed: np.ndarray | None = None

    @classmethod
    def plan(cls, kind: str, size: int, density: float, extra: dict[str, Any],
             rng: np.random.Generator | None) -> "_MaskRule | None":
        """The rule, or ``None`` when every entry is kept (as :mod:`~hf_soup.methods.sparsify` decides)."""
        if density >= 1:
            return None
        rule = cls(kind, size, density)
        if kind == "random":
            rule.rng = rng
            return rule
        if kind == "magnitude":
            lo, hi, descending = 0, min(size, max(1, int(density * size))), True
        else:  # magnitude_outliers
            target, top = int(density * size), int(extra["gamma"] * size)
            lo = max(0, size - target - top)
            hi, descending = min(size, lo + target), False
        if lo >= hi:
            rule.empty = True
            return rule
        rule.kept = hi - lo
        ranks = ([lo - 1] if lo > 0 else []) + [hi - 1]  # after the lower bound's rank, up to the upper's
        rule.ranks = ranks
        rule.selections = [RankSelection(size, r, descending) for r in ranks]
        rule.descending = descending
        return rule

    def speculate(self, sample: np.ndarray, cap: int) -> None:
        """Band each rank's value from ``sample`` (magnitudes of a strided sample): one-pass selections."""
        count = sample.size
        bands = []
        for rank in self.ranks:
            ascending = self.size - 1 - rank if self.descending else rank
            p = (ascending + 0.5) / self.size
            spread = _SPREAD * math.sqrt(count * p * (1 - p)) + 1
            bands.append((math.floor(p * count - spread), math.ceil(p * count + spread)))
        inner = sorted({i for band in bands for i in band if 0 <= i < count})
        ordered = np.partition(sample, inner) if inner else sample
        self.selections = []
        for rank, (low, high) in zip(self.ranks, bands):
            lo = float(ordered[low]) if low >= 0 else 0.0
            hi = float(ordered[high]) if high < count else math.inf
            first, last = (hi, lo) if self.descending else (lo, hi)
            self.selections.append(BandSelection(self.size, rank, self.descending, first, last, cap))

    def settle(self) -> None:
        """Rank selections for the bands that missed."""
        self.selections = [RankSelection(self.size, s.rank, self.descending) if getattr(s, "failed", False) else s
                           for s in self.selections]

    @property
    def pending(self) -> bool:
        return any(not s.done for s in self.selections)

    @property
    def needs_values(self) -> bool:
        return self.kind != "random" and not self.empty

    def begin_pass(self) -> None:
        for selection in self.selections:
            selection.begin_pass()

    def observe(self, start: int, magnitudes: np.ndarray) -> None:
        for selection in self.selections:
            selection.observe(start, magnitudes)

    def end_pass(self) -> None:
        for selection in self.selections:
            selection.end_pass()

    def _draws(self, start: int, stop: int, out: np.ndarray | None = None,
               scratch: np.ndarray | None = None) -> np.ndarray:
        """Whether each of elements ``[start, stop)`` is kept: the whole-tensor draws ``random() < density``."""
        generator = np.random.Generator(type(self.rng.bit_generator)(0))  # type: ignore[union-attr]
        generator.bit_generator.state = self.rng.bit_generator.state  # type: ignore[union-attr]
        generator.bit_generator.advance(start)
        draws = generator.random(stop - start, out=scratch)
        return np.less(draws, self.density, out=out)

    def count_kept(self, size: int, step: int, pack: bool) -> None:
        """Random masks: count the kept entries of the whole tensor (draws, no reads); ``pack``: keep them as bits.

        The bits (``size / 8`` bytes) spare the l1 pass a second draw; :meth:`unpack` frees them.
        """
        if self.kind != "random":
            return
        generator = np.random.Generator(type(self.rng.bit_generator)(0))  # type: ignore[union-attr]
        generator.bit_generator.state = self.rng.bit_generator.state  # type: ignore[union-attr]
        draws = block.SCRATCH.get("prepass_draws", np.float64, min(size, step))
        keep = block.SCRATCH.get("prepass_keep", np.bool_, min(size, step))
        self.packed = np.empty((size + 7) // 8, dtype=np.uint8) if pack and step % 8 == 0 else None
        kept = 0
        for start in range(0, size, step):
            count = min(size, start + step) - start
            np.less(generator.random(count, out=draws[:count]), self.density, out=keep[:count])
            kept += int(np.count_nonzero(keep[:count]))
            if self.packed is not None:
                self.packed[start // 8 : (start + count + 7) // 8] = np.packbits(keep[:count])
        self.kept = kept

    def unpack(self) -> None:
        """Forget the bits :meth:`count_kept` kept."""
        self.packed = None

    def fill(self, start: int, stop: int, differences: np.ndarray, out: np.ndarray, scratch) -> None:
        """The keep mask of flat elements ``[start, stop)`` into ``out``, from their ``θ_k − θ_base``."""
        count = stop - start
        if self.kind == "random":
            self._draws(start, stop, out, scratch.get("draws", np.float64, count))
        elif self.empty:
            out[...] = False
        else:
            magnitudes = np.abs(differences, out=scratch.get("magnitudes", np.float64, count))
            first_ranked(magnitudes, start, self.selections[-1].result, self.descending, out)  # type: ignore
            if len(self.selections) == 2:  # drop what ranks at or before the lower bound
                lower = scratch.get("lower", np.bool_, count)
                first_ranked(magnitudes, start, self.selections[0].result, self.descending, lower)  # type: ignore
                np.logical_not(lower, out=lower)
                np.logical_and(out, lower, out=out)

    def keep(self, start: int, stop: int, magnitudes: np.ndarray | None) -> np.ndarray:
        """The keep mask of flat elements ``[start, stop)`` (``magnitudes``: theirs, for magnitude rules)."""
        if self.kind == "random":
            if self.packed is not None and start % 8 == 0:
                return np.unpackbits(self.packed[start // 8 : (stop + 7) // 8], count=stop - start).view(np.bool_)
            return self._draws(start, stop)
        if self.empty:
            return np.zeros(stop - start, dtype=bool)
        assert magnitudes is not None
        upper = self.selections[-1].result
        keep = first_ranked(magnitudes, start, upper, self.descending)  # type: ignore[arg-type]
        if len(self.selections) == 2:  # drop what ranks at or before the lower bound
            keep &= ~first_ranked(magnitudes, start, self.selections[0].result, self.descending)  # type: ignore
        return keep


class _TaskVectors:
    """The weighted, sparsified task vectors of one block: ``vectors(k)`` is ``w_k · τ_k`` (float64)."""

    def __init__(self, base: np.ndarray, inputs: list[np.ndarray], masks: list[np.ndarray | None],
                 factors: list[float], weights: list[float], differences: list[np.ndarray | None] | None = None):
        self.base, self.inputs, self.masks, self.factors, self.weights = base, inputs, masks, factors, weights
        self.differences = differences or [None] * len(inputs)  # θ_k − θ_base already formed, used once

    def __call__(self, index: int) -> np.ndarray:
        vector, self.differences[index] = self.differences[index], None
        if vector is None:
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
    weighted = [vectors(index) for index in range(count)]  # each formed once
    total = weighted[0].copy()
    for vector in weighted[1:]:
        total += vector
    positive = total >= 0
    del total
    mixed = divisor = None
    for index in range(count):
        vector = weighted[index]
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
