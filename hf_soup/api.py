"""The Python API: :func:`soup` writes a soup directory, :func:`merge_state_dicts` merges in memory."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import RecipeError
from .pipeline import SoupResult, run_recipe
from .recipe import parse_recipe


def soup(
    ingredients: Sequence[Any],
    method: str = "uniform",
    output_dir: str | Path | None = None,
    *,
    evaluation: Any = None,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    on_missing: str = "error",
    config_from: int = 0,
    base_model: str | None = None,
    output_format: str = "model",
    adapter_rank: int | str = "concat",
    push_to_hub: str | Mapping[str, Any] | None = None,
    token: str | None = None,
    seed: int = 0,
    compare: bool = False,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = False,
    allow_nonfinite: bool = False,
    **params: Any,
) -> SoupResult:
    """Merge ``ingredients`` (repo IDs, paths or state dicts) and write the soup.

    >>> result = soup(["./run-1", "./run-2"], method="uniform", output_dir="./soup")  # doctest: +SKIP
    >>> result.report["method"]  # doctest: +SKIP
    'uniform'

    Method parameters are keyword arguments (``weights=[...]`` for ``weighted``).
    PEFT adapters are ingredients too (``base_model`` overrides the base they name);
    ``output_format="adapter"`` writes a LoRA adapter (``adapter_rank``: ``"concat"`` or an int).
    NaN / Inf in an ingredient, or values that overflow ``dtype``, raise
    :class:`~hf_soup.errors.NonFiniteError` unless ``allow_nonfinite=True``.
    """
    data: dict[str, Any] = {
        "ingredients": list(ingredients),
        "method": {"name": method, "params": params},
        "output": {"dir": str(output_dir) if output_dir is not None else None, "dtype": dtype,
                   "max_shard_size": max_shard_size, "overwrite": overwrite, "config_from": config_from,
                   "format": output_format, "rank": adapter_rank},
        "on_missing": on_missing,
        "seed": seed,
        "compare": compare,
        "device": device,
        "threads": threads,
        "allow_nonfinite": allow_nonfinite,
    }
    if base_model is not None:
        data["base_model"] = base_model
    if evaluation is not None:
        data["evaluation"] = evaluation
    if push_to_hub is not None:
        data["push_to_hub"] = {"repo_id": push_to_hub} if isinstance(push_to_hub, str) else dict(push_to_hub)
    return run_recipe(parse_recipe(data, "soup()"), token=token, progress=progress)


def merge_state_dicts(
    state_dicts: Sequence[Mapping[str, Any]],
    method: str = "uniform",
    *,
    dtype: str | None = None,
    on_missing: str = "error",
    threads: int | None = None,
    base_state_dict: Mapping[str, Any] | None = None,
    seed: int = 0,
    **params: Any,
) -> dict[str, Any]:
    """Merge in-memory state dicts with a data-free method; return the merged state dict.

    >>> merged = merge_state_dicts([model_a.state_dict(), model_b.state_dict()])  # doctest: +SKIP
    >>> model_a.load_state_dict(merged)  # doctest: +SKIP
    >>> merge_state_dicts([ft_a, ft_b], "ties", base_state_dict=base, density=0.5)  # doctest: +SKIP

    ``base_state_dict``: the pre-trained weights, for base-relative methods (``ties``...).
    The inputs are never modified.
    """
    from .engine import execute
    from .engine.execute import default_threads
    from .engine.prepass import prepass
    from .engine.sinks import StateDictSink
    from .methods.base import MergeContext, TensorMethod
    from .align import align
    from .ingredients import resolve_ingredients
    from .prepare import resolve_with_bases

    if not state_dicts:
        raise RecipeError("state_dicts: give at least one state dict")
    recipe = parse_recipe({"ingredients": [dict(sd) if not isinstance(sd, dict) else sd for sd in state_dicts],
                           "method": {"name": method, "params": params}, "on_missing": on_missing,
                           "output": {"dtype": dtype}}, "merge_state_dicts()")
    merger = recipe.take_method()
    if not isinstance(merger, TensorMethod):
        raise RecipeError(f"method: {method!r} needs an evaluation; use hf_soup.soup(..., evaluation=...) instead")
    uses_base = merger.uses_base != "never" and base_state_dict is not None
    if merger.uses_base == "required" and base_state_dict is None:
        raise RecipeError(f"base_state_dict: method {method!r} merges relative to a base model; pass its state dict")
    ingredients, _ = resolve_with_bases(recipe.ingredients)
    count = len(ingredients)
    if uses_base:
        ingredients += resolve_ingredients([dict(base_state_dict)])
    names = [i.name for i in ingredients[:count]] + ["base_state_dict"] * uses_base
    with ExitStack() as stack:
        sources = {i: stack.enter_context(ing.open()) for i, ing in enumerate(ingredients)}
        alignment = align(list(sources.values()), names, on_missing=on_missing, dtype=recipe.output.dtype)
        merger.setup(MergeContext(count, names[:count], alignment=alignment, seed=seed,
                                  base="base_state_dict" if uses_base else None))
        sink = StateDictSink()
        streamed = [count] * uses_base + list(range(count))
        prepass(merger, alignment.tensors, sources, streamed, threads=threads or default_threads())
        execute(merger, alignment.tensors, sources, streamed, lambda _: sink, threads=threads or default_threads())
    return sink.state_dict
