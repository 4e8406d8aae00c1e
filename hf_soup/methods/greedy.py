"""Greedy soup (Wortsman et al. 2022; RADIN paper, Recipe 1).

Score every ingredient, sort them (best first by default), start the soup with the
first, and add each next ingredient if the soup with it scores at least as well as the
current soup (``strict: true``: strictly better). Memory: one float32 running sum plus
the evaluated model; ingredients are streamed one at a time. Cost: N ingredient
evaluations + N - 1 candidate evaluations = 2N - 1 full evaluations.

```yaml
method: {name: greedy, order: descending, strict: false}
evaluation: {dataset: ./val.parquet, text_column: text}
```

``order: ascending`` starts from the worst ingredient (the AME paper's App. A.4 study).
The plan lists the kept ingredients in the order they were added, so the written soup
is bit-identical to the one that was scored.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from ..errors import MethodParameterError
from .base import MergeContext, MergePlan, MethodParams, PlanningMethod
from .uniform import UniformSoup


class GreedyParams(MethodParams):
    """``order``: ``descending`` (best first, the paper) or ``ascending``; ``strict``: keep only on strict gains."""

    order: Literal["descending", "ascending"] = "descending"
    strict: bool = False


def require_evaluator(context: MergeContext, method: str) -> Any:
    """The context's evaluator, bound to the ingredients; else a clear error."""
    evaluator = context.evaluator
    if evaluator is None or evaluator.builder is None:
        raise MethodParameterError(
            f"method: {method} needs an evaluation; add evaluation: {{dataset: ..., ...}} to the recipe "
            "(or evaluation=... to hf_soup.soup)"
        )
    return evaluator


def ingredient_order(scores: Sequence[float], metric: Any, order: str) -> list[int]:
    """Ingredient indices sorted best first (``descending``) or worst first; ties keep index order."""
    best_first = sorted(range(len(scores)), key=lambda i: (metric.sort_key(scores[i]), i))
    return best_first if order == "descending" else best_first[::-1]


class GreedySoup(PlanningMethod):
    """Recipe 1 of the RADIN paper: the greedy soup with the ``>=`` rule."""

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
        order = ingredient_order(scores, metric, self.params.order)
        running = evaluator.builder.running_sum()
        running.add(order[0])
        best = scores[order[0]]
        refs = list(context.refs)
        steps = [{"ingredient": order[0], "ref": refs[order[0]], "soup_score": best, "kept": True}]
        for index in order[1:]:
            candidate = running.candidate(index)
            score = evaluator.evaluate_state_dict(candidate, f"greedy: + ingredient {index}")
            del candidate
            kept = metric.better(score, best, strict=self.params.strict)
            if kept:
                running.add(index)
                best = score
            steps.append({"ingredient": index, "ref": refs[index], "soup_score": score, "kept": kept})
        self._details = {
            "scores": scores,
            "order": order,
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
