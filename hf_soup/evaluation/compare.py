"""``compare: true`` — the chosen soup against the usual references, on the same split.

Rows (the "Rethinking weight-averaged merging" study, §6.2 / Table 1, for the user's
own ingredients):

* ``best ingredient`` and ``mean of ingredients`` (Table 1's "Perf Ave");
* ``uniform soup`` and ``greedy soup`` (weight averaging);
* ``logit ensemble`` and ``greedy logit ensemble`` (averaging outputs: not a soup, it
  costs N forward passes at inference; computed from the cached logits);
* the chosen method, when it is not one of the above.

``ensemble_gap`` gives the logit ensemble's lead over the uniform and the chosen soup
(the paper's Fig. 5(a) gap; positive when the ensemble is better, whatever the metric's
direction). Feature ensembles (Table 1's "Ens Fts") are not computed.

>>> comparison = compare_soups(evaluator, "radin", plan, refs)      # doctest: +SKIP
>>> comparison["rows"][0]  # doctest: +SKIP
{'name': 'best ingredient', 'kind': 'ingredient', 'score': 0.91, 'num_models': 1, ...}

Each row's ``num_full_evaluations`` is what that entry costs on its own (a logit pass
counts as one); ``num_full_evaluations`` at the top is what the comparison itself ran.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import EvaluationError

PLOT_FILE = "soup_comparison.png"


def _greedy_ensemble(cache: Any, scores: Sequence[float], metric: Any) -> tuple[float, list[int]]:
    """Greedy selection on cached logits: add an ingredient if the ensemble does not get worse."""
    from ..methods.greedy import ingredient_order

    order = ingredient_order(scores, metric, "descending")
    members, best = [order[0]], scores[order[0]]
    for index in order[1:]:
        score = cache.score(members + [index])
        if metric.better(score, best, strict=False):
            members.append(index)
            best = score
    return best, members


def ensemble_rows(evaluator: Any, *, selection: Any = None) -> list[dict[str, Any]]:
    """The ``logit ensemble`` and ``greedy logit ensemble`` rows, scored on ``evaluator``'s split.

    The greedy ensemble's members are chosen on ``selection``'s split (default: the
    same split). Costs N logit passes per split (cached: free when already built).
    """
    selection = evaluator if selection is None else selection
    cache = evaluator.logit_cache()
    n = evaluator.builder.num_ingredients
    greedy_score, members = _greedy_ensemble(selection.logit_cache(), selection.ingredient_scores(), evaluator.metric)
    if selection is not evaluator:  # chosen on the selection split, scored on this one
        greedy_score = cache.score(members)
    return [
        {"name": "logit ensemble", "kind": "ensemble", "score": cache.score(list(range(n))), "num_models": n,
         "num_full_evaluations": n, "ingredients": list(range(n))},
        {"name": "greedy logit ensemble", "kind": "ensemble", "score": greedy_score, "num_models": len(members),
         "num_full_evaluations": n, "ingredients": members},
    ]


def score_written(evaluator: Any, plan: Any, description: str, base: Any = None) -> float:
    """The score of exactly what ``plan`` writes: merged as the writer would, one full evaluation.

    ``base``: the open source of the base model, for a plan relative to one (``plan.base``);
    the evaluator is bound to the ingredients alone, so it is added for this soup only.
    """
    if plan.base is None:
        return evaluator.evaluate_plan(plan.method, list(plan.ingredients), description)
    from .candidates import SoupBuilder
    from .device_candidates import HostCandidates

    if base is None:
        raise EvaluationError(f"compare: the {plan.method.name} soup merges relative to a base model; "
                              "compare_soups(..., base=<its open source>) must be given it")
    builder = evaluator.require_builder()
    with_base = SoupBuilder(builder.tensors, {**builder.sources, plan.base: base})
    HostCandidates(evaluator.model, with_base).load(plan.method, plan.streamed)
    return evaluator._score_model(evaluator.model, description)


def compare_soups(evaluator: Any, method_name: str, plan: Any, refs: Sequence[str], *,
                  selection: Any = None, base: Any = None) -> dict[str, Any]:
    """Score the references and the chosen plan on ``evaluator``'s split; return the report entry.

    ``selection``: the evaluator the method scored its plan on, when it is not
    ``evaluator`` (a learned soup's ``test_split``). Then every row is scored afresh on
    ``evaluator``'s held-out split, while the choices — the best ingredient, greedy
    soup and greedy ensemble members — are still made on ``selection``'s split, so no
    reference selects on the split it is scored on. ``base``: the base model's open source
    when the plan is relative to one (the references are soups of the ingredients alone).
    """
    from ..methods.greedy import GreedySoup
    from ..methods.base import MergeContext

    held_out = selection is not None and selection is not evaluator
    select = selection if held_out else evaluator
    metric = evaluator.metric
    start, select_start = evaluator.num_full_evaluations, select.num_full_evaluations
    n = evaluator.builder.num_ingredients
    evaluator.logit_cache()  # N logit passes; the ingredient scores come with them
    scores = evaluator.ingredient_scores()
    select_scores = select.ingredient_scores() if held_out else scores
    best_index = min(range(n), key=lambda i: (metric.sort_key(select_scores[i]), i))
    rows: list[dict[str, Any]] = [
        {"name": "best ingredient", "kind": "ingredient", "score": scores[best_index], "num_models": 1,
         "num_full_evaluations": n, "ingredients": [best_index], "ref": refs[best_index]},
        {"name": "mean of ingredients", "kind": "ingredient", "score": sum(scores) / n, "num_models": 1,
         "num_full_evaluations": n},
    ]
    details = {} if held_out else (plan.details or {})
    if method_name == "uniform":
        uniform = details.get("score")
    else:
        uniform = None
    if uniform is None:
        uniform = evaluator.evaluate_soup(list(range(n)), description="compare: uniform soup")
    rows.append({"name": "uniform soup", "kind": "soup", "score": uniform, "num_models": n, "num_full_evaluations": 1,
                 "ingredients": list(range(n))})
    if method_name == "greedy" and "score" in details:
        greedy_score, greedy_kept = details["score"], list(plan.ingredients)
    else:
        greedy = GreedySoup(GreedySoup.Params())
        context = MergeContext(n, list(refs), higher_is_better=metric.higher_is_better, evaluator=select)
        greedy_plan = greedy.plan(context, [])
        greedy_score, greedy_kept = greedy_plan.details["score"], list(greedy_plan.ingredients)
        if held_out:  # chosen on the selection split, scored on the held-out one (same order: same bytes)
            greedy_score = evaluator.evaluate_soup(greedy_kept, description="compare: greedy soup")
    rows.append({"name": "greedy soup", "kind": "soup", "score": greedy_score, "num_models": len(greedy_kept),
                 "num_full_evaluations": 2 * n - 1, "ingredients": greedy_kept})
    rows.extend(ensemble_rows(evaluator, selection=select))
    if method_name not in ("uniform", "greedy"):
        score = details.get("score")
        if score is None:  # a data-free method (or a held-out split): score what the plan writes
            score = score_written(evaluator, plan, f"compare: {method_name}", base)
        rows.append({"name": f"{method_name} soup (chosen)", "kind": "soup", "score": score,
                     "num_models": len(plan.ingredients), "ingredients": list(plan.ingredients),
                     "num_full_evaluations": details.get("num_full_evaluations", 1)})
    else:
        for row in rows:
            if row["name"] == f"{method_name} soup":
                row["name"] += " (chosen)"
    chosen = next(row for row in rows if row["name"].endswith("(chosen)"))
    ensemble = next(row for row in rows if row["name"] == "logit ensemble")["score"]
    direction = 1.0 if metric.higher_is_better else -1.0
    gaps = {"uniform soup": direction * (ensemble - uniform), "chosen": direction * (ensemble - chosen["score"])}
    return {
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "split": evaluator.spec.split,
        "selection_split": select.spec.split,
        "num_examples": evaluator.num_examples,
        "ingredient_scores": scores,
        "rows": rows,
        "chosen_score": chosen["score"],
        # §6.2 / Fig. 5(a): how far weight averaging stays behind the logit ensemble
        # (metric units; > 0: the ensemble is better).
        "ensemble_gap": gaps,
        "plot": PLOT_FILE,
        "num_full_evaluations": evaluator.num_full_evaluations - start
        + (select.num_full_evaluations - select_start if held_out else 0),
    }


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as a Markdown table (for a model card or a terminal)."""
    lines = [f"| | {comparison['metric']} | models | full evaluations |", "|---|---:|---:|---:|"]
    for row in comparison["rows"]:
        lines.append(f"| {row['name']} | {row['score']:.4f} | {row['num_models']} | {row['num_full_evaluations']} |")
    gaps = comparison.get("ensemble_gap")
    if gaps:
        lines.append("")
        lines.append(f"Logit ensemble ahead of the uniform soup by {gaps['uniform soup']:+.4f}, of the chosen soup by "
                     f"{gaps['chosen']:+.4f} ({comparison['metric']}; the ensemble costs N forward passes).")
    return "\n".join(lines)


def plot_comparison(comparison: dict[str, Any], refs: Sequence[str], path: Any) -> bool:
    """Write a PNG: each ingredient's score as a bar, the soups and ensembles as bars after them.

    Returns ``False`` (and writes nothing) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    scores = comparison["ingredient_scores"]
    rows = [r for r in comparison["rows"] if r["name"] not in ("best ingredient", "mean of ingredients")]
    labels = [f"#{i}" for i in range(len(scores))] + [r["name"] for r in rows]
    values = list(scores) + [r["score"] for r in rows]
    colors = ["#9e9e9e"] * len(scores) + [
        "#1f77b4" if r["kind"] == "soup" else "#ff7f0e" for r in rows
    ]
    colors = [("#2ca02c" if "(chosen)" in label else color) for label, color in zip(labels, colors)]
    figure = Figure(figsize=(max(6.0, 0.55 * len(labels) + 2), 4.0), dpi=100)
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.add_subplot()
    axes.bar(range(len(values)), values, color=colors)
    mean = sum(scores) / len(scores)
    axes.axhline(mean, color="#616161", linestyle="--", linewidth=1, label="mean of ingredients")
    axes.set_xticks(range(len(values)), labels, rotation=35, ha="right", fontsize=8)
    axes.set_ylabel(comparison["metric"] + (" (higher is better)" if comparison["higher_is_better"] else " (lower is better)"))
    low, high = min(values), max(values)
    margin = (high - low) * 0.25 or abs(high) * 0.05 or 0.05
    axes.set_ylim(low - margin, high + margin)
    axes.set_title("Ingredients (grey), soups (blue), ensembles (orange), chosen (green)", fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    return True
