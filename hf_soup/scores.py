"""Score the ingredients, their logit ensemble and reference soups, without writing a soup.

The logit ensemble (issue "ensemble"; "Rethinking weight-averaged merging" §6.2) averages
the ingredients' *outputs*: a reference score that weight averaging tries to reach at the
cost of one model, not a soup (it needs N forward passes at inference, so ``method:
ensemble`` is refused). :func:`evaluate` gives it next to each ingredient's score and
the uniform soup's, on one validation split:

>>> result = evaluate(["./run-1", "./run-2"], evaluation={"dataset": "./val.csv"})  # doctest: +SKIP
>>> result["ensemble_score"], result["soup_scores"]["uniform"], result["ingredient_scores"]  # doctest: +SKIP
(0.93, 0.92, [0.9, 0.89])

``hf-soup evaluate REF... --eval-dataset D`` prints the same as a table (``--json``: this
dict). The rows and their costs are those of ``hf-soup merge --compare``.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Sequence

from .errors import RecipeError

def _check(ingredients: Sequence[Any], evaluation: Any, soups: Sequence[str]) -> tuple[Any, list[Any]]:
    """Validate everything that needs no download; return the spec and the soup methods."""
    from pydantic import ValidationError

    from .evaluation.spec import parse_evaluation
    from .methods.registry import build_method, format_validation_error

    if isinstance(ingredients, (str, bytes)) or not list(ingredients):
        raise RecipeError("ingredients: give a list of repo IDs or paths to evaluate, e.g. ['./run-1', './run-2']")
    if evaluation is None:
        raise RecipeError("evaluation: required; give a dataset to score on, e.g. evaluation={'dataset': './val.csv'} "
                          "(--eval-dataset on the command line)")
    try:
        spec = parse_evaluation(evaluation)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, "evaluation")) from None
    if isinstance(soups, str):
        soups = [soups]
    methods = [build_method(name) for name in soups]  # unknown names fail here, before any work
    return spec, methods


def evaluate(
    ingredients: Sequence[Any],
    evaluation: Any,
    *,
    token: str | None = None,
    ensemble: bool = True,
    soups: Sequence[str] = ("uniform",),
    on_missing: str = "error",
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score each ingredient, the logit ensemble(s) and ``soups`` on ``evaluation``'s split.

    ``evaluation``: what a recipe's ``evaluation:`` accepts (a mapping, an
    :class:`~hf_soup.evaluation.EvaluationSpec`, or a bare dataset). ``ensemble``: also
    score the logit ensemble of all ingredients and the greedy logit ensemble (the
    ingredients sorted best first, each added when the ensemble does not get worse, as
    in ``--compare``). ``soups``: soup methods (default parameters) scored as they would
    be written; data-driven ones (``greedy``) run on the same split. ``device``:
    ``"cpu"`` forces the CPU (default: accelerate's device).

    Returns ``metric``, ``higher_is_better``, ``split``, ``num_examples``, ``refs``,
    ``ingredient_scores``, ``ensemble_score`` / ``greedy_ensemble_score`` /
    ``greedy_ensemble_ingredients`` (``None`` without ``ensemble``), ``soup_scores``
    (method name -> score), ``rows`` (the ``--compare`` table rows; a soup row's
    ``num_full_evaluations`` counts the passes run for it, the ingredient scores being known),
    ``num_full_evaluations`` and ``evaluation`` (the report's description).
    """
    from .hub_token import check_token

    check_token(token)
    from .compat.versions import check_installed

    check_installed()
    spec, methods = _check(ingredients, evaluation, soups)
    from .evaluation.compare import ensemble_rows, score_written
    from .evaluation.evaluator import Evaluator
    from .methods.base import MergeContext, plan_merge
    from .prepare import open_aligned, resolve_with_bases

    resolved, _ = resolve_with_bases(ingredients, token=token)  # LoRA adapters stand for base + ΔW
    evaluator = Evaluator.for_ingredients(spec, resolved, device=device, progress=progress, token=token)
    refs = [i.name for i in resolved]
    n = len(resolved)
    with ExitStack() as stack:
        sources, alignment = open_aligned(stack, resolved, on_missing=on_missing)
        evaluator.bind(alignment.tensors, sources)
        if ensemble:
            evaluator.logit_cache()  # N logit passes; the ingredient scores come with them
        scores = evaluator.ingredient_scores()
        rows: list[dict[str, Any]] = [
            {"name": f"ingredient {i}", "kind": "ingredient", "score": score, "num_models": 1,
             "num_full_evaluations": 1, "ingredients": [i], "ref": refs[i]}
            for i, score in enumerate(scores)
        ]
        soup_scores: dict[str, float] = {}
        for method in methods:
            if method.name == "uniform":
                score, kept = evaluator.evaluate_soup(list(range(n)), description="uniform soup"), list(range(n))
                cost = 1
            else:
                context = MergeContext(n, refs, higher_is_better=evaluator.higher_is_better, evaluator=evaluator,
                                       seed=seed, alignment=alignment)
                plan = plan_merge(method, context, resolved)
                score, kept = (plan.details or {}).get("score"), list(plan.ingredients)
                if score is None:  # a data-free method: score exactly what it would write
                    score = score_written(evaluator, plan, f"{method.name} soup")
                cost = (plan.details or {}).get("num_full_evaluations", 1)
            soup_scores[method.name] = score
            rows.append({"name": f"{method.name} soup", "kind": "soup", "score": score, "num_models": len(kept),
                         "num_full_evaluations": cost, "ingredients": kept})
        ensembles = ensemble_rows(evaluator) if ensemble else []
        rows.extend(ensembles)
    return {
        "metric": evaluator.metric.name,
        "higher_is_better": evaluator.higher_is_better,
        "split": evaluator.spec.split,
        "num_examples": evaluator.num_examples,
        "refs": refs,
        "ingredient_scores": scores,
        "ensemble_score": ensembles[0]["score"] if ensembles else None,
        "greedy_ensemble_score": ensembles[1]["score"] if ensembles else None,
        "greedy_ensemble_ingredients": ensembles[1]["ingredients"] if ensembles else None,
        "soup_scores": soup_scores,
        "rows": rows,
        "num_full_evaluations": evaluator.num_full_evaluations,
        "evaluation": evaluator.describe(),
    }
