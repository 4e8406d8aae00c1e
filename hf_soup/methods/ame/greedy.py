"""Greedy AME (Lee & Ngo, App. A.4): keep an AME step only if it improves the validation score.

The ingredients are visited best first (``order: descending``, default) or worst first
(``ascending``: the paper's own greedy ensembling started from the weakest model; its
Table 1 reports both); w₀ is the first visited ingredient (``pivot: first``, default).
The pivot's score is its validation score (``context.scores`` or the evaluator's), so
those scores must come from the same evaluation as the candidates'. Each
optimizer step of the AME schedule is tried; when the candidate model does not score
better than the current one, the step is rejected and the previous model *and optimizer
state* are restored. The learning-rate schedule is not rewound: step t keeps the rate
η_t of its place in the schedule (the paper does not say; the optimizer's own step
count, e.g. Adam's bias correction, counts accepted steps only). Every other parameter is AME's (optimizer, rate schedule, epochs,
batching...).

    method: {name: ame_greedy, optimizer: adamw, lr: 0.01, epochs: 2, order: descending}
    evaluation: {dataset: ./val.parquet, text_column: text}

The plan is an ordinary AME merge restricted to the accepted steps: undoing a step and
never taking it give the same weights and optimizer state, so the written soup is
bit-identical to the model that was scored last, and it is streamed like any AME merge.
Each candidate is built by streaming AME with the accepted steps plus the new one, so a
schedule of S steps costs S(S+1)/2 step applications over the weights (cheap next to
the S full evaluations) and never holds more than one candidate model in memory.
Cost in full evaluations: N ingredient scores (for the order) + S candidates, plus one
for the pivot when it is not an ingredient.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from ...errors import MethodParameterError
from .method import AmeParams, AmeSoup
from ..base import MergeContext, MergePlan, PlanningMethod


class GreedyAmeParams(AmeParams):
    """AME's parameters with greedy defaults, plus ``strict``.

    ``order`` defaults to ``descending`` (strongest first) and ``pivot`` to ``first`` (the
    first visited ingredient). ``strict`` (default true, as in the paper: a step is kept
    "if and only if" the score improves); false also keeps steps that tie.
    """

    order: Literal["given", "ascending", "descending"] = "descending"
    pivot: Any = "first"
    strict: bool = True


def _improves(new: float, old: float, higher_is_better: bool, strict: bool) -> bool:
    if higher_is_better:
        return new > old if strict else new >= old
    return new < old if strict else new <= old


class GreedyAme(PlanningMethod):
    """Greedy amortized model ensembling: AME that rejects steps that do not help."""

    name = "ame_greedy"
    Params = GreedyAmeParams

    def __init__(self, params: GreedyAmeParams):
        super().__init__(params)
        ame_params = params.model_dump(exclude={"strict"})
        ame_params["pivot"] = params.pivot  # a state dict stays as it is
        self.ame = AmeSoup(AmeParams.model_validate(ame_params))
        self._details: dict[str, Any] = {}

    def setup(self, context: MergeContext) -> None:
        evaluator = context.evaluator
        if evaluator is None or evaluator.builder is None:
            raise MethodParameterError(
                "method: ame_greedy scores a candidate after every step, so it needs an evaluation; add "
                "evaluation: {dataset: ...} to the recipe (evaluation=... in hf_soup.soup), or use method: ame"
            )
        p = self.params
        if p.batch_size > context.num_ingredients:  # the rest is checked by AME's own setup in plan()
            raise MethodParameterError(f"method.batch_size: {p.batch_size} is more than the "
                                       f"{context.num_ingredients} ingredients; use at most {context.num_ingredients}")

    def plan(self, context: MergeContext, ingredients: Sequence[Any]) -> MergePlan:
        evaluator = context.evaluator
        higher = bool(evaluator.higher_is_better)
        start = evaluator.num_full_evaluations
        scores = list(context.scores) if context.scores is not None else list(evaluator.ingredient_scores())
        ame = self.ame
        ame.setup(MergeContext(context.num_ingredients, list(context.refs), scores=scores, higher_is_better=higher,
                               evaluator=evaluator, device=context.device, seed=context.seed,
                               alignment=context.alignment))
        schedule = ame.schedule
        indices = list(range(context.num_ingredients))
        pivot = ame.pivot_ingredient
        if pivot is not None:
            current = scores[pivot]
        else:
            ame.restrict([])
            current = evaluator.evaluate_state_dict(evaluator.builder.merge(ame, indices), "greedy AME: pivot")
        accepted = []
        trials = []
        for step in schedule:
            ame.restrict([*accepted, step])
            candidate = evaluator.builder.merge(ame, indices)
            score = evaluator.evaluate_state_dict(candidate, f"greedy AME: step {step.step}/{len(schedule)}")
            del candidate
            kept = _improves(score, current, higher, self.params.strict)
            if kept:
                accepted.append(step)
                current = score
            trials.append({"step": step.step, "epoch": step.epoch, "batch": list(step.batch), "lr": step.lr,
                           "score": score, "kept": kept})
        ame.restrict(accepted)
        self._details = {
            **ame.report(),
            "scores": scores,
            "steps": trials,
            "accepted_steps": [s.step for s in accepted],
            # the ingredients the result depends on: the pivot (all of them for the soup pivot) and accepted batches
            "kept": sorted((set(indices) if pivot is None else {pivot}) | {i for s in accepted for i in s.batch}),
            "score": current,
            "higher_is_better": higher,
            "strict": self.params.strict,
            "num_full_evaluations": evaluator.num_full_evaluations - start,
        }
        return MergePlan(ame, indices, dict(self._details))

    def report(self) -> dict[str, Any]:
        return dict(self._details)
