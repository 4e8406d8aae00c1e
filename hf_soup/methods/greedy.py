"""Greedy soup (Wortsman et al. 2022, Recipe 1; RADIN paper, Recipe 1).

Score every ingredient, sort them (best first by default), start the soup with the
first, and add each next ingredient if the soup with it scores at least as well as the
current soup. Memory: one float64 running sum on the evaluation device plus the evaluated
model; ingredients are streamed one at a time. Cost: N ingredient evaluations + N - 1
candidate evaluations = 2N - 1 full evaluations.

```yaml
method: {name: greedy}                      # rule: recipe1 (the papers' text), the default
method: {name: greedy, rule: official}      # the selection of the official model-soups code
evaluation: {dataset: ./val.parquet, text_column: text}
```

Two rules, which differ only when scores tie:

* ``rule: recipe1`` (default) — Recipe 1 as printed in both papers: ingredients "sorted in
  decreasing order of ValAcc", kept when the new soup's score is ``>=`` the current one
  (``strict: false``). The text leaves the order of equal scores open; here the lower
  index comes first (``ties: earlier``), so the recipe's ingredient order decides.
* ``rule: official`` — what the authors' released ``main.py`` does: sort ascending by
  held-out accuracy and reverse (a stable sort, so among equal scores the *later*
  ingredient comes first: ``ties: later``) and keep a candidate only on a strict ``>``
  (``strict: true``).

The default follows the papers' text, which is what RADIN (and hf-soup's comparison
table) call the greedy soup; ``>=`` lets an ingredient that changes nothing on the
validation split join, which is the papers' stated choice. ``order``, ``ties`` and
``strict``, when given, override the rule's values. ``order: ascending`` visits the worst
ingredient first (the AME paper's App. A.4 study); ``ties`` is about visiting order in
either direction.

The official code updates the soup as a running mean, ``soup·n/(n+1) + new/(n+1)``; here
the soup is ``(sum of the kept ingredients) / count`` in float32 — the same value up to
the last bits, and the exact bytes a ``uniform`` merge of the kept ingredients writes
(the plan lists them in the order they were added, so the written soup is
bit-identical to the one that was scored).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import model_validator

from ..errors import MethodParameterError
from .base import MergeContext, MergePlan, MethodParams, PlanningMethod
from .uniform import UniformSoup

#: What each ``rule`` sets: (order, ties, strict).
RULES: dict[str, tuple[str, str, bool]] = {
    "recipe1": ("descending", "earlier", False),
    "official": ("descending", "later", True),
}


class GreedyParams(MethodParams):
    """``rule``: ``recipe1`` (papers' text, ``>=``) or ``official`` (released code, ``>``, later index first).

    ``order`` (``descending`` | ``ascending``), ``ties`` (``earlier`` | ``later``: which of
    equal scores is visited first) and ``strict`` (keep only on strict gains) override the
    rule's values when given.
    """

    rule: Literal["recipe1", "official"] = "recipe1"
    order: Literal["descending", "ascending"] | None = None
    ties: Literal["earlier", "later"] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _apply_rule(self) -> "GreedyParams":
        # keys left out take the rule's value (not marked as set: a pinned recipe stays as written)
        for key, value in zip(("order", "ties", "strict"), RULES[self.rule]):
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        return self

    def resolved(self) -> tuple[str, str, bool]:
        """The effective ``(order, ties, strict)``: explicit keys, else the rule's."""
        return self.order, self.ties, self.strict  # type: ignore[return-value]


def require_evaluator(context: MergeContext, method: str) -> Any:
    """The context's evaluator, bound to the ingredients; else a clear error."""
    evaluator = context.evaluator
    if evaluator is None or evaluator.builder is None:
        raise MethodParameterError(
            f"method: {method} needs an evaluation; add evaluation: {{dataset: ..., ...}} to the recipe "
            "(or evaluation=... to hf_soup.soup)"
        )
    return evaluator


def ingredient_order(scores: Sequence[float], metric: Any, order: str, ties: str = "earlier") -> list[int]:
    """Ingredient indices best first (``descending``) or worst first (NaN scores count as worst).

    ``ties``: among equal scores, the lower index is visited first (``earlier``) or the
    higher one (``later``, as the official code's reversed stable sort).

    >>> from hf_soup.evaluation.metrics import Metric
    >>> ingredient_order([0.5, 0.9, 0.9], Metric.from_spec("accuracy"), "descending")
    [1, 2, 0]
    >>> ingredient_order([0.5, 0.9, 0.9], Metric.from_spec("accuracy"), "descending", ties="later")
    [2, 1, 0]
    """
    first = ties == "earlier"
    if order == "descending":
        return sorted(range(len(scores)), key=lambda i: (metric.sort_key(scores[i]), i if first else -i))
    best_first = sorted(range(len(scores)), key=lambda i: (metric.sort_key(scores[i]), -i if first else i))
    return best_first[::-1]


class GreedySoup(PlanningMethod):
    """The greedy soup: Recipe 1 (``>=``) by default, or the official code's selection."""

    name = "greedy"
    Params = GreedyParams
    paper = "https://arxiv.org/abs/2203.05482"
    paper_title = ("Model soups: averaging weights of multiple fine-tuned models improves accuracy without "
                   "increasing inference time (Wortsman et al., 2022)")

    def setup(self, context: MergeContext) -> None:
        if context.num_ingredients < 1:
            raise MethodParameterError("ingredients: greedy needs at least one ingredient")

    def plan(self, context: MergeContext, ingredients: Sequence[Any]) -> MergePlan:
        evaluator = require_evaluator(context, self.name)
        metric = evaluator.metric
        start = evaluator.num_full_evaluations
        scores = evaluator.ingredient_scores()
        order_name, ties, strict = self.params.resolved()
        order = ingredient_order(scores, metric, order_name, ties)
        running = evaluator.running_sum()  # formed on the evaluation device when the model allows
        running.add(order[0])
        best = scores[order[0]]
        refs = list(context.refs)
        steps = [{"ingredient": order[0], "ref": refs[order[0]], "soup_score": best, "kept": True}]
        for index in order[1:]:
            running.load_candidate(index)
            score = evaluator.evaluate_model(evaluator.model, f"greedy: + ingredient {index}")
            kept = metric.better(score, best, strict=strict)
            if kept:
                running.add(index)
                best = score
            steps.append({"ingredient": index, "ref": refs[index], "soup_score": score, "kept": kept})
        self._details = {
            "scores": scores,
            "order": order,
            "rule": {"name": self.params.rule, "order": order_name, "ties": ties, "strict": strict},
            "steps": steps,
            "kept": list(running.members),
            "score": best,
            "metric": metric.name,
            "higher_is_better": metric.higher_is_better,
            "num_full_evaluations": evaluator.num_full_evaluations - start,
        }
        return MergePlan(UniformSoup(UniformSoup.Params()), list(running.members), dict(self._details))

    def report(self) -> dict[str, Any]:
        return dict(getattr(self, "_details", {}))
