"""Run a recipe end to end: resolve -> align -> plan -> write -> report (-> push)."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .align import Alignment, align
from .errors import RecipeError
from .ingredients import Ingredient, resolve_ingredients
from .io.shards import parse_size
from .methods.base import MergeContext, MergePlan, PlanningMethod, TensorMethod
from .methods.registry import build_method
from .recipe import Recipe
from .report import build_report, ingredient_entries, write_report

logger = logging.getLogger("hf_soup")


@dataclass
class SoupResult:
    """What :func:`hf_soup.soup` returns: the output directory and its report."""

    output_dir: Path | None
    report: dict[str, Any]
    state_dict: dict[str, Any] | None = field(default=None, repr=False)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Push the soup directory to ``repo_id``; return the commit URL."""
        from .hub import push_soup

        if self.output_dir is None:
            raise RecipeError("this soup was not written to a directory; give output_dir to push it")
        return push_soup(self.output_dir, repo_id, **kwargs)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._last = self._start

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self._start}


def _plan(method, context: MergeContext, ingredients: list[Ingredient]) -> MergePlan:
    method.setup(context)
    if isinstance(method, PlanningMethod):
        return method.plan(context, ingredients)
    assert isinstance(method, TensorMethod)
    return MergePlan(method, list(range(len(ingredients))))


def _weights_of(plan: MergePlan) -> list[float] | None:
    weights = plan.method.report().get("weights")
    return list(weights) if weights is not None and len(weights) == len(plan.ingredients) else None


def run_recipe(recipe: Recipe, *, token: str | None = None, progress: bool = False) -> SoupResult:
    """Execute ``recipe``; write the soup atomically into ``recipe.output.dir``."""
    from .io.staging import check_destination, staged_directory
    from .output import copy_sidecars, shard_plan, write_index, write_shards

    if not recipe.output.dir:
        raise RecipeError("output.dir: required; say where to write the soup (-o DIR)")
    destination = check_destination(recipe.output.dir, recipe.output.overwrite)
    timer = _Timer()
    method = build_method(recipe.method.name, recipe.method.params)
    adapter_output = recipe.output.format == "adapter"
    if adapter_output:
        from .adapters.output import check_adapter_method

        check_adapter_method(method)
    from .ingredients.hub_headers import precheck_hub_alignment

    precheck_hub_alignment(recipe.ingredients, token=token, on_missing=recipe.on_missing)
    needs_evaluation = method.needs_evaluation or recipe.compare
    if needs_evaluation and recipe.evaluation is None:
        reason = "compare: true" if recipe.compare else f"method {method.name!r}"
        raise RecipeError(f"evaluation: {reason} needs an evaluation dataset; add evaluation: {{dataset: ...}} "
                          "(--eval-dataset on the command line, evaluation=... in Python)")
    ingredients = resolve_ingredients(recipe.ingredients, token=token)
    base = _attach_bases(ingredients, recipe, token)
    timer.lap("resolve")
    logger.info("resolved %d ingredients: %s", len(ingredients), ", ".join(i.name for i in ingredients))
    evaluator = None
    if needs_evaluation:  # loads and checks the data and builds the model before any merge work
        from .evaluation.evaluator import Evaluator

        evaluator = Evaluator.for_ingredients(recipe.evaluation, ingredients, progress=progress, token=token)
        timer.lap("evaluation_setup")
    with ExitStack() as stack:
        sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(ingredients)}
        alignment = align(list(sources.values()), [i.name for i in ingredients], [i.config for i in ingredients],
                          on_missing=recipe.on_missing, dtype=recipe.output.dtype, reference=recipe.output.config_from)
        timer.lap("align")
        logger.info("aligned %d tensors (%d parameters)", len(alignment.tensors), alignment.num_parameters)
        context = MergeContext(len(ingredients), [i.name for i in ingredients], extra={"seed": recipe.seed, "alignment": alignment})
        if evaluator is not None:
            context.evaluator = evaluator.bind(alignment.tensors, sources)
            context.higher_is_better = evaluator.higher_is_better
        plan = _plan(method, context, ingredients)
        if adapter_output:
            from .adapters.output import check_adapter_plan

            check_adapter_plan(plan, ingredients)
        timer.lap("plan")
        logger.info("plan: %s over ingredients %s", plan.method.name, plan.ingredients)
        comparison = None
        if recipe.compare:
            from .evaluation.compare import compare_soups

            comparison = compare_soups(evaluator, method.name, plan, context.refs)
            plan.details.setdefault("scores", comparison["ingredient_scores"])
            plan.details.setdefault("score", comparison["chosen_score"])
            timer.lap("compare")
        shards = [] if adapter_output else shard_plan(alignment.tensors, parse_size(recipe.output.max_shard_size))
        with staged_directory(destination, recipe.output.overwrite) as staging:
            if adapter_output:
                from .adapters.output import write_adapter_soup

                written = write_adapter_soup(staging, ingredients, sources, plan, base, recipe.output.rank,
                                             recipe.output.dtype)
            else:
                bar = _progress_bar(alignment, progress)
                write_shards(staging, shards, alignment.tensors, plan.method, sources, plan.ingredients,
                             progress=bar.update if bar else None)
                if bar:
                    bar.close()
                write_index(staging, shards)
                copy_sidecars(staging, ingredients[recipe.output.config_from], recipe.output.dtype)
                written = {"format": "model"}
            timer.lap("merge")
            report = _report(recipe, method, plan, ingredients, alignment, shards, timer)
            report["output"].update(written)
            if base is not None:
                from .adapters import adapters_report

                report["adapters"] = adapters_report(ingredients, base)
            if evaluator is not None:
                report["evaluation"] = evaluator.describe()
            if comparison is not None:
                from .evaluation.compare import plot_comparison

                if not plot_comparison(comparison, context.refs, staging / comparison["plot"]):
                    comparison["plot"] = None  # matplotlib is not installed
                report["comparison"] = comparison
            write_report(staging, report)
            for name, data in plan.files.items():  # e.g. a learned soup's coefficient plot
                (staging / name).write_bytes(data)
            _write_card(staging, recipe.output.card_template)
    logger.info("soup written to %s", destination)
    result = SoupResult(destination, report)
    if recipe.push_to_hub is not None:
        result.report["pushed_to"] = result.push_to_hub(token=token, **recipe.push_to_hub.model_dump())
    return result


def _attach_bases(ingredients: list[Ingredient], recipe: Recipe, token: str | None):
    """Give PEFT adapter ingredients their base model; ``None`` when there are no adapters."""
    if recipe.base_model is None and all(i.weight_format != "adapter" for i in ingredients):
        return None
    from .adapters import attach_bases

    return attach_bases(ingredients, recipe.base_model, token=token)


def _progress_bar(alignment: Alignment, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=alignment.num_parameters, unit="param", unit_scale=True, desc="souping")


def _write_card(directory: Path, template: str | None = None) -> None:
    try:
        from .card import write_card
    except ImportError:  # the model card module is optional until the Hub work lands
        return
    write_card(directory, template)


def _report(recipe, method, plan, ingredients, alignment, shards, timer) -> dict[str, Any]:
    details = {**plan.method.report(), **plan.details}
    if plan.method is not method:
        details.setdefault("plan_method", plan.method.name)
    return build_report(
        method=method.name,
        parameters=method.params.model_dump(mode="json"),
        details=details,
        ingredients=ingredient_entries(ingredients, plan.ingredients, _weights_of(plan), details.get("scores")),
        config=ingredients[recipe.output.config_from].config,
        output={
            "dtypes": sorted({t.dtype for t in alignment.tensors}),
            "num_parameters": alignment.num_parameters,
            "num_tensors": len(alignment.tensors),
            "shards": [s.filename for s in shards],
            "max_shard_size": recipe.output.max_shard_size,
        },
        alignment={k: v for k, v in alignment.summary().items() if k in ("tied_weights", "skipped_keys", "copied_keys", "dtype_differences", "missing_keys")},
        timings=timer.total(),
        recipe=_pinned_recipe(recipe, ingredients, method),
        num_full_evaluations=plan.details.get("num_full_evaluations", 0),
        score=plan.details.get("score"),
    )


def _pinned_recipe(recipe: Recipe, ingredients: list[Ingredient], method=None) -> dict[str, Any]:
    """The recipe as run, with Hub ingredients pinned to their resolved commit."""
    dump = recipe.model_dump(mode="json", exclude_defaults=True, exclude={"ingredients", "evaluation", "method"})
    if method is not None:  # the method's own JSON form (e.g. a state-dict AME pivot is summarised)
        dump["method"] = {"name": recipe.method.name, "params": method.params.model_dump(mode="json", exclude_unset=True)}
    dump["ingredients"] = [
        {"model": i.repo_id, "revision": i.sha} if i.repo_id and i.sha else i.name for i in ingredients
    ]
    if recipe.evaluation is not None:
        dump["evaluation"] = recipe.evaluation.describe()
    return {"ingredients": dump.pop("ingredients"), **dump}
