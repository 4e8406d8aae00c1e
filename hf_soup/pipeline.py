"""Run a recipe end to end: resolve -> align -> plan -> write -> report (-> push)."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .ingredients.ingredient import Ingredient
from .methods.base import MergeContext, MergePlan, PlanningMethod, plan_merge
from .output.report import build_report, ingredient_entries, write_report
from .prepare import open_aligned, resolve_with_bases
from .recipe import Recipe

logger = logging.getLogger("hf_soup")


@dataclass
class SoupResult:
    """What :func:`hf_soup.soup` returns: the output directory and its report."""

    output_dir: Path | None
    report: dict[str, Any]
    state_dict: dict[str, Any] | None = field(default=None, repr=False)
    is_main_process: bool = True

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Push the soup directory to ``repo_id``; return the commit URL."""
        from .output.push import push_soup

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


def _weights_of(plan: MergePlan) -> list[float] | None:
    """Each planned ingredient's weight, or ``None`` when the soup is no fixed linear combination (AME)."""
    weights = plan.method.linear_weights(len(plan.ingredients))
    return list(weights) if weights is not None else None


def run_recipe(recipe: Recipe, *, token: str | None = None, progress: bool = False) -> SoupResult:
    """Execute ``recipe``; write the soup atomically into ``recipe.output.dir``.

    Launched as several processes (``torchrun`` / ``accelerate launch``), the processes
    share the work; see :mod:`hf_soup.distributed`.
    """
    from .hub_token import check_token
    from .io.os_errors import resource_errors

    check_token(token)  # a malformed token is refused before any request, never echoed
    try:
        with resource_errors():  # disk full, too many open files: one clean line, nothing left behind
            return _run_recipe(recipe, token, progress)
    finally:
        from .io.staging import retry_discards

        retry_discards()  # a staging folder that could not be removed while the ingredients were open


def _run_recipe(recipe: Recipe, token: str | None, progress: bool) -> SoupResult:
    from .compat.versions import check_installed
    from .distributed import get_dist

    check_installed()
    if not recipe.output.dir:
        raise RecipeError("output.dir: required; say where to write the soup (-o DIR)")
    run = _Run(recipe, get_dist(recipe.device), token, progress)
    with run.dist.stage("checking the recipe"):
        run.check()
    run.resolve()
    with ExitStack() as stack:
        run.plan(stack)
        report = run.write()
    logger.info("soup written to %s", run.destination)
    # The other processes are done here: they must not wait in a collective for an upload
    # that may outlast its timeout. Process 0 pushes alone; a failed push fails process 0.
    report = run.dist.broadcast(report)
    if recipe.push_to_hub is not None and run.dist.is_main:
        report["pushed_to"] = SoupResult(run.destination, report).push_to_hub(
            token=token, **recipe.push_to_hub.model_dump())
    return SoupResult(run.destination, report, is_main_process=run.dist.is_main)


class _Run:
    """The state of one recipe run, step by step: check, resolve, plan, write."""

    def __init__(self, recipe: Recipe, dist: Any, token: str | None, progress: bool):
        self.recipe, self.dist, self.token, self.progress = recipe, dist, token, progress
        self.timer = _Timer()
        self.adapter_output = recipe.output.format == "adapter"
        self.evaluator = None
        self.comparison: dict[str, Any] | None = None

    def check(self) -> None:
        """Validate everything that needs no download: destination, method, evaluation."""
        from .io.staging import check_destination

        recipe = self.recipe
        self.destination = check_destination(recipe.output.dir, recipe.output.overwrite)
        if recipe.output.card_template is not None:
            from .output.card import check_template

            check_template(recipe.output.card_template)
        self.method = recipe.take_method()
        if self.adapter_output:
            from .adapters.export import check_adapter_method

            check_adapter_method(self.method)
        if self.dist.is_main:  # header-only check of Hub ingredients before any download; one process suffices
            from .ingredients.hub_headers import precheck_hub_alignment

            precheck_hub_alignment(recipe.ingredients, token=self.token, on_missing=recipe.on_missing)
        self.needs_evaluation = self.method.needs_evaluation or recipe.compare
        if recipe.evaluation is not None and not self.needs_evaluation and self.dist.is_main:
            logger.warning("the evaluation is not used: method %r is data-free and compare is off; add --compare "
                           "(compare: true) to score the soup against its ingredients", self.method.name)
        _check_base(recipe, self.method)
        if self.needs_evaluation and recipe.evaluation is None:
            reason = "compare: true" if recipe.compare else f"method {self.method.name!r}"
            raise RecipeError(f"evaluation: {reason} needs an evaluation dataset; add evaluation: {{dataset: ...}} "
                              "(--eval-dataset on the command line, evaluation=... in Python)")

    def resolve(self) -> None:
        """Download / locate the ingredients (main process of each node first), build the evaluator."""
        recipe, dist = self.recipe, self.dist

        def resolve() -> tuple[list[Ingredient], Any, Any]:
            resolved, base = resolve_with_bases(recipe.ingredients, recipe.base_model, token=self.token)
            return resolved, base, _merge_base(self.method, resolved, base, recipe, self.token)

        self.ingredients, self.base, self.merge_base = dist.local_main_first(resolve)
        _check_inputs_outside(self.destination, recipe, self.ingredients + [self.merge_base] * bool(self.merge_base))
        dist.agree_on_revisions(self.ingredients + [self.merge_base] * bool(self.merge_base))
        self.timer.lap("resolve")
        logger.info("resolved %d ingredients: %s", len(self.ingredients), ", ".join(i.name for i in self.ingredients))
        if self.needs_evaluation:  # loads and checks the data and builds the model before any merge work
            from .evaluation.evaluator import Evaluator

            dist.preload("transformers", "datasets")
            self.evaluator = dist.local_main_first(lambda: Evaluator.for_ingredients(
                recipe.evaluation, self.ingredients, device=dist.device, progress=self.progress and dist.is_main,
                token=self.token), "preparing the evaluation")
            self.timer.lap("evaluation_setup")

    def plan(self, stack: ExitStack) -> None:
        """Open the ingredients, align them, let the method decide, and run the comparison."""
        recipe, dist, ingredients = self.recipe, self.dist, self.ingredients
        opened = ingredients + [self.merge_base] * bool(self.merge_base)  # the base model last, if any
        with dist.stage("aligning the ingredients"):
            names = [i.name for i in ingredients] + ([f"base_model {self.merge_base.name}"] if self.merge_base else [])
            self.sources, self.alignment = open_aligned(stack, opened, names=names, on_missing=recipe.on_missing,
                                                        dtype=recipe.output.dtype, reference=recipe.output.config_from)
        self.timer.lap("align")
        logger.info("aligned %d tensors (%d parameters)", len(self.alignment.tensors), self.alignment.num_parameters)
        context = MergeContext(len(ingredients), [i.name for i in ingredients], device=dist.device,
                               seed=recipe.seed, alignment=self.alignment,
                               base=self.merge_base.name if self.merge_base else None)
        if self.evaluator is not None:  # bound to the ingredients; a base model is not one of them
            ingredient_sources = {i: s for i, s in self.sources.items() if i < len(ingredients)}
            context.evaluator = self.evaluator.bind(self.alignment.tensors, ingredient_sources)
            context.higher_is_better = self.evaluator.higher_is_better
        with dist.stage("planning the merge"):
            self.merge_plan = plan_merge(self.method, context, ingredients)
            if self.merge_base is not None and self.merge_plan.method.uses_base != "never":
                self.merge_plan.base = len(ingredients)  # its source index: streamed first
            if self.adapter_output:
                from .adapters.export import check_adapter_plan

                check_adapter_plan(self.merge_plan, ingredients)
        dist.agree_on_plan(self.merge_plan)
        self.timer.lap("plan")
        logger.info("plan: %s over ingredients %s", self.merge_plan.method.name, self.merge_plan.ingredients)
        if recipe.compare:
            from .evaluation.compare import compare_soups

            held_out = self.method.comparison_evaluator(self.evaluator)
            with dist.stage("comparing the soups"):
                base = self.sources[self.merge_plan.base] if self.merge_plan.base is not None else None
                self.comparison = compare_soups(held_out or self.evaluator, self.method.name, self.merge_plan,
                                                context.refs, selection=self.evaluator, base=base)
            if held_out is None:  # scores on another split must not pass for the evaluation split's
                self.merge_plan.details.setdefault("scores", self.comparison["ingredient_scores"])
                self.merge_plan.details.setdefault("score", self.comparison["chosen_score"])
            self.timer.lap("compare")

    def write(self) -> dict[str, Any] | None:
        """Write the soup into a staged directory and publish it; return the report (process 0)."""
        from .engine.execute import default_threads
        from .io.shards import parse_size
        from .output.files import shard_plan

        recipe, dist, plan = self.recipe, self.dist, self.merge_plan
        shards = [] if self.adapter_output else shard_plan(self.alignment.tensors, parse_size(recipe.output.max_shard_size))
        from .engine.finite import FiniteGuard, guarding

        report = None
        names = [i.name for i in self.ingredients]
        guard = FiniteGuard(names, recipe.allow_nonfinite)
        with dist.staged_directory(self.destination, recipe.output.overwrite) as staging:
            if not self.adapter_output:
                mine = dist.my_shards(shards)
                bar = _progress_bar(sum(meta.numel for s in mine for _, meta in s.entries), self.progress and dist.is_main)
                with guarding(guard):
                    dist.write_shards(staging, shards, self.alignment.tensors, plan.method, self.sources,
                                      plan.streamed, progress=bar.update if bar else None,
                                      threads=recipe.threads or default_threads(), device=dist.device)
                if bar:
                    bar.close()
                counts = FiniteGuard(names, recipe.allow_nonfinite)
                for part in dist.all_gather(guard.report()):  # every process's shards
                    counts.merge_counts(part)
                self.nonfinite = counts.report()
                if self.nonfinite["total"] and dist.is_main:
                    logger.warning("%d non-finite or overflowing value(s) merged (allow_nonfinite); see the report's "
                                   "'nonfinite' entry", self.nonfinite["total"])
            if dist.is_main:
                report = self._finish(staging, shards)
        return report

    def _finish(self, staging: Path, shards: list) -> dict[str, Any]:
        """Process 0: index or adapter files, config files, report, plots and model card."""
        from .output.files import copy_sidecars, write_index

        recipe, plan = self.recipe, self.merge_plan
        if self.adapter_output:  # small: process 0 writes it alone
            from .adapters.export import write_adapter_soup

            written = write_adapter_soup(staging, self.ingredients, self.sources, plan, self.base, recipe.output.rank,
                                         recipe.output.dtype)
        else:
            write_index(staging, shards)
            copy_sidecars(staging, self.ingredients[recipe.output.config_from], recipe.output.dtype)
            written = {"format": "model", "nonfinite": self.nonfinite}
        self.timer.lap("merge")
        report = _report(recipe, self.method, plan, self.ingredients, self.alignment, shards, self.timer)
        report["output"].update(written)
        if plan.base is not None:
            report["base_model"] = {"ref": self.merge_base.name, "repo_id": self.merge_base.repo_id,
                                    "sha": self.merge_base.sha}
            if self.merge_base.repo_id and self.merge_base.sha:  # pinned like the ingredients
                report["recipe"]["base_model"] = f"{self.merge_base.repo_id}@{self.merge_base.sha}"
        if self.base is not None:
            from .adapters.bases import adapters_report

            report["adapters"] = adapters_report(self.ingredients, self.base)
        if self.evaluator is not None:
            report["evaluation"] = self.evaluator.describe()
        if self.comparison is not None:
            from .evaluation.compare import plot_comparison

            if not plot_comparison(self.comparison, [i.name for i in self.ingredients], staging / self.comparison["plot"]):
                self.comparison["plot"] = None  # matplotlib is not installed
            report["comparison"] = self.comparison
        if self.evaluator is not None:
            self._summarise(report)
        if self.dist.report():
            report["distributed"] = self.dist.report()
        write_report(staging, report)
        for name, data in plan.files.items():  # e.g. a learned soup's coefficient plot
            (staging / name).write_bytes(data)
        _write_card(staging, recipe.output.card_template)
        from .output.report import read_report

        return read_report(staging)  # with the card's hash, exactly as soup_report.json holds it


    def _summarise(self, report: dict[str, Any]) -> None:
        """One source for the scores and counts that the CLI, the report and the card show."""
        from .summary import build_summary

        held_out = getattr(self.method, "held_out_evaluator", None)
        total = self.evaluator.num_full_evaluations + (
            held_out.num_full_evaluations if held_out is not None and held_out is not self.evaluator else 0)
        summary = build_summary(report["details"], report["evaluation"],
                                data_driven=isinstance(self.method, PlanningMethod), total_evaluations=total,
                                comparison_evaluations=(self.comparison or {}).get("num_full_evaluations", 0),
                                refs=[i.name for i in self.ingredients])
        report["summary"] = summary
        report["num_full_evaluations"] = report["evaluation"]["num_full_evaluations"] = total
        for warning in summary["warnings"]:
            logger.warning("%s", warning)


def _check_inputs_outside(destination: Path, recipe: Recipe, ingredients: list[Ingredient]) -> None:
    """The output directory must not be (or hold) an ingredient, its base, the data or the card template."""
    from .io.staging import check_not_an_input

    inputs: list[Any] = []
    for ingredient in ingredients:
        for item in (ingredient, ingredient.base):
            if item is not None:
                inputs += [*item.files, *([item.directory] if item.directory else [])]
    evaluation = recipe.evaluation
    if evaluation is not None:
        for value in ([evaluation.dataset] if isinstance(evaluation.dataset, str) else
                      evaluation.dataset if isinstance(evaluation.dataset, list) else []):
            if Path(value).expanduser().exists():
                inputs.append(value)
        if evaluation.processor_from:
            inputs.append(evaluation.processor_from)
    if recipe.output.card_template:
        inputs.append(recipe.output.card_template)
    check_not_an_input(destination, inputs)


def _check_base(recipe: Recipe, method: Any) -> None:
    """Before any work: a base-relative method needs ``base_model`` (PEFT adapters bring their own)."""
    uses = getattr(method, "uses_base", "never")
    if uses != "required" or recipe.base_model is not None:
        return
    from .adapters.detect import is_adapter_folder

    full = [ref for ref in recipe.ingredients if isinstance(ref, str) and Path(ref).expanduser().exists()
            and not (Path(ref).expanduser().is_dir() and is_adapter_folder(Path(ref).expanduser()))]
    if full or not all(isinstance(ref, str) for ref in recipe.ingredients):
        raise RecipeError(f"base_model: method {method.name!r} merges task vectors relative to a base model; "
                          "add base_model: <the pre-trained model the ingredients were fine-tuned from> "
                          "(--base-model REF on the command line)")


def _merge_base(method: Any, ingredients: list[Ingredient], adapters_base: Any, recipe: Recipe, token: str | None):
    """The base model a base-relative method merges against (``None`` when none is used)."""
    uses = getattr(method, "uses_base", "never")
    if uses == "never":
        if recipe.base_model is not None and adapters_base is None:
            logger.warning("base_model %s is not used: method %r does not merge relative to a base model",
                           recipe.base_model, method.name)
        return None
    if adapters_base is not None:
        return adapters_base
    if recipe.base_model is None:
        if uses == "required":
            raise RecipeError(f"base_model: method {method.name!r} merges task vectors relative to a base model; "
                              "add base_model: (--base-model REF)")
        return None
    from .ingredients.resolve import resolve_ingredient

    base = resolve_ingredient(recipe.base_model, token=token)
    if base.weight_format == "adapter":
        raise RecipeError(f"base_model: {recipe.base_model} is a PEFT adapter; give the full pre-trained model")
    files = sorted(str(Path(f).resolve()) for f in base.files)
    for index, ingredient in enumerate(ingredients):
        if files and sorted(str(Path(f).resolve()) for f in ingredient.files) == files:
            logger.warning("ingredients[%d] (%s) is the base model: its task vector is zero, yet it counts in "
                           "normalize and in the ingredient count; remove it from the ingredients", index,
                           ingredient.name)
    return base


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="param", unit_scale=True, desc="souping")


def _write_card(directory: Path, template: str | None = None) -> None:
    from .output.card import write_card

    write_card(directory, template)


def _report(recipe, method, plan, ingredients, alignment, shards, timer) -> dict[str, Any]:
    details = {**plan.method.report(), **plan.details}
    if plan.method is not method:
        details.setdefault("plan_method", plan.method.name)
    rows = ingredient_entries(ingredients, plan.ingredients, _weights_of(plan), details.get("scores"))
    if isinstance(details.get("kept"), list):  # a method that reads ingredients it rejects (greedy AME)
        for index, row in enumerate(rows):
            if index not in details["kept"]:
                row.update(kept=False, weight=0.0)
    return build_report(
        method=method.name,
        parameters=method.params.model_dump(mode="json"),
        details=details,
        ingredients=rows,
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
        dump["evaluation"] = recipe.evaluation.as_recipe()  # keys a recipe accepts, so the card's recipe runs
    base = next((i.base for i in ingredients if getattr(i, "base", None) is not None), None)
    if base is not None and base.repo_id and base.sha:  # adapters' Hub base, pinned like the ingredients
        dump["base_model"] = f"{base.repo_id}@{base.sha}"
    return {"ingredients": dump.pop("ingredients"), **dump}
