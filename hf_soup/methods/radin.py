"""RADIN: Resource-ADjusted soup craftING (Ménès & Risser-Maroux; Recipe 2, eq. 3-4).

1. Cache every ingredient's validation logits once (N passes).
2. Draw ``candidates`` distinct random subsets, sizes uniform in ``[min_size, max_size]``
   (default ``[2, N-1]``), seeded; ``include_uniform`` adds the full set.
3. Rank them by the metric of their averaged logits (eq. 3, no full evaluation) plus
   the prior ``prior * |S|`` (eq. 4), signed so that the prior favours larger soups.
4. Fully evaluate the top ``budget`` candidates; return the best by its real score.
5. ``include_singles``: the N single ingredients compete too. Their real scores are
   already known — the logit pass of step 1 *is* a full evaluation of each — so this
   costs nothing; a soup must beat the best ingredient strictly to be returned.

Cost: N logit passes + ``budget`` full evaluations.

```yaml
method: {name: radin, budget: 4, candidates: 200, prior: 0.0, include_uniform: true}
method: {name: radin, include_singles: false, include_uniform: false}   # the paper's §4.1 protocol
```

Defaults and where they come from:

* ``candidates: 200``, sizes ``[2, N-1]``, no duplicates — §4.1 ("200 candidates without
  overlap ... size evenly sampled in [2, N-1]").
* ``include_uniform: true`` — §4.1 excludes the uniform soup for its evaluation but
  "in real world application we recommend adding it to candidates".
* ``prior: 0.0`` — §4.1 compares λ = 0 and λ = 1 (accuracy in percent); neither is
  called the default, so hf-soup takes the plain eq. 3 ranking. ``prior`` is in the
  metric's units: λ = 1 on accuracy in percent is ``prior: 0.01`` for accuracy in [0, 1].
* ``budget`` — the paper's tables use B = 1 and B = 25 and leave B to the user; the
  default N - 1 gives RADIN the same 2N - 1 passes as the greedy soup.
* ``include_singles: true`` — not in Recipe 2, which returns the best *soup*: a set
  dominated by one fine-tune can make every candidate soup worse than that ingredient
  on validation, although the greedy soup, the paper's baseline, can never be. It is on
  by default because it is free; ``include_singles: false`` is the exact Recipe 2, and
  then a returned soup scoring below the best ingredient is reported as a warning (in
  the output and the model card).

The Spearman correlation in the report is between the approximate and the real scores
of the ``budget`` fully evaluated candidates (the paper's is over all 200 candidates,
scored on the test set; here only the evaluated ones have a real score); ``None`` when
fewer than 3 are evaluated.
"""

from __future__ import annotations

import math
import random
from itertools import combinations
from typing import Any, Sequence

from pydantic import Field

from ..errors import MethodParameterError
from .base import MergeContext, MergePlan, MethodParams, PlanningMethod
from .greedy import require_evaluator
from .uniform import UniformSoup


class RadinParams(MethodParams):
    """See the module docstring; ``seed`` defaults to the recipe's ``seed``."""

    budget: int | None = Field(default=None, ge=1)
    candidates: int = Field(default=200, ge=1)
    prior: float = 0.0
    include_uniform: bool = True
    include_singles: bool = True
    min_size: int = Field(default=2, ge=1)
    max_size: int | None = Field(default=None, ge=1)
    seed: int | None = None


def _count_subsets(n: int, low: int, high: int) -> int:
    return sum(math.comb(n, k) for k in range(low, high + 1))


def sample_subsets(n: int, count: int, low: int, high: int, seed: int) -> list[tuple[int, ...]]:
    """``count`` distinct sorted subsets of ``range(n)``, sizes uniform in ``[low, high]``.

    When ``count`` reaches the number of such subsets, all of them are returned (sorted by
    size then members). Sizes whose subsets are used up are drawn again.
    """
    if count >= _count_subsets(n, low, high):
        return [c for k in range(low, high + 1) for c in combinations(range(n), k)]
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    per_size = {k: 0 for k in range(low, high + 1)}
    sizes = list(per_size)
    while len(out) < count:
        size = rng.choice(sizes)
        if per_size[size] >= math.comb(n, size):  # every subset of this size is drawn already
            sizes.remove(size)
            continue
        subset = tuple(sorted(rng.sample(range(n), size)))
        if subset not in seen:
            seen.add(subset)
            per_size[size] += 1
            out.append(subset)
    return out


class RadinSoup(PlanningMethod):
    """Recipe 2 of the RADIN paper, with the eq. 4 size prior."""

    name = "radin"
    Params = RadinParams
    paper = None  # no URL in the project's copy
    paper_title = "RADIN: Souping on a Budget (Ménès & Risser-Maroux)"

    def _sizes(self, n: int) -> tuple[int, int]:
        high = self.params.max_size if self.params.max_size is not None else n - 1
        return self.params.min_size, high

    def setup(self, context: MergeContext) -> None:
        n = context.num_ingredients
        low, high = self._sizes(n)
        if n < 3 and not self.params.include_uniform:
            raise MethodParameterError(
                f"method: radin draws subsets of sizes [2, N-1], which is empty for N = {n} ingredients; "
                "use greedy, or set include_uniform: true"
            )
        if self.params.max_size is not None and self.params.max_size > n:
            raise MethodParameterError(
                f"method.max_size: {self.params.max_size} is more than the {n} ingredients; use at most {n}"
            )
        sizes_given = bool({"min_size", "max_size"} & self.params.model_fields_set)
        if low > high and (sizes_given or not self.params.include_uniform):
            raise MethodParameterError(
                f"method.min_size: {low} is larger than max_size {high} (N = {n} ingredients), so no subset "
                f"can be drawn; choose 1 <= min_size <= max_size <= {n}"
            )

    def plan(self, context: MergeContext, ingredients: Sequence[Any]) -> MergePlan:
        evaluator = require_evaluator(context, self.name)
        metric = evaluator.metric
        n = context.num_ingredients
        start, start_logits = evaluator.num_full_evaluations, evaluator.num_logit_passes
        cache = evaluator.logit_cache()
        scores = [cache.scores[i] for i in range(n)]
        seed = self.params.seed if self.params.seed is not None else context.seed
        low, high = self._sizes(n)
        subsets = sample_subsets(n, self.params.candidates, low, high, seed) if low <= high else []
        full = tuple(range(n))
        if self.params.include_uniform and full not in subsets:
            subsets.append(full)
        sign = 1.0 if metric.higher_is_better else -1.0
        ranked = []
        for subset in subsets:
            approx = cache.score(subset)
            ranking = approx + sign * self.params.prior * len(subset)
            ranked.append({"ingredients": list(subset), "size": len(subset), "approx_score": approx,
                           "ranking_score": ranking})
        ranked.sort(key=lambda c: metric.sort_key(c["ranking_score"]))
        for rank, candidate in enumerate(ranked):
            candidate["rank"] = rank
        budget = min(self.params.budget if self.params.budget is not None else max(1, n - 1), len(ranked))
        evaluated = ranked[:budget]
        for candidate in evaluated:
            candidate["score"] = evaluator.evaluate_soup(candidate["ingredients"],
                                                         description=f"radin: candidate {candidate['rank'] + 1}/{budget}")
        best = evaluated[0]
        for candidate in evaluated[1:]:
            if metric.better(candidate["score"], best["score"], strict=True):
                best = candidate
        best_single = min(range(n), key=lambda i: (metric.sort_key(scores[i]), i))
        singles = {"best": best_single, "score": scores[best_single], "included": self.params.include_singles}
        if self.params.include_singles and metric.better(scores[best_single], best["score"], strict=True):
            best = {"ingredients": [best_single], "size": 1, "approx_score": scores[best_single],
                    "score": scores[best_single], "single_ingredient": True}
        from ..evaluation.metrics import spearman

        self._details = {
            "scores": scores,
            "score": best["score"],
            "approx_score": best["approx_score"],
            "kept": best["ingredients"],
            "budget": budget,
            "prior": self.params.prior,
            "num_candidates": len(ranked),
            "seed": seed,
            "evaluated_candidates": evaluated,
            "single_ingredients": singles,
            "chosen": "single ingredient" if best.get("single_ingredient") else "soup",
            "spearman": spearman([c["approx_score"] for c in evaluated], [c["score"] for c in evaluated]),
            "metric": metric.name,
            "higher_is_better": metric.higher_is_better,
            "num_logit_passes": evaluator.num_logit_passes - start_logits,
            "num_full_evaluations": evaluator.num_full_evaluations - start,
        }
        return MergePlan(UniformSoup(UniformSoup.Params()), list(best["ingredients"]), dict(self._details))

    def report(self) -> dict[str, Any]:
        return dict(getattr(self, "_details", {}))
