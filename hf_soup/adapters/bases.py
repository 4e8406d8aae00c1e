"""Find the base model of adapter ingredients, and check that they share one.

The base is the recipe's ``base_model:`` when given, else each adapter's
``base_model_name_or_path`` (with its ``revision``). Adapters that name different bases
are refused: a soup of adapters is ``base + Σ w_k ΔW_k`` for *one* base.

>>> base = attach_bases(ingredients, base_model="org/base")  # doctest: +SKIP
>>> ingredients[1].base is base  # doctest: +SKIP
True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..errors import AdapterBaseError, HfSoupError

logger = logging.getLogger("hf_soup")


def _declared(ingredient: Any) -> tuple[str, str | None]:
    """The base an adapter names, normalised (local paths made absolute)."""
    name = ingredient.adapter.base_model_name_or_path
    if not name:
        raise AdapterBaseError(
            f"{ingredient.name}: the adapter does not name its base model (base_model_name_or_path is empty); "
            "set base_model: in the recipe (--base-model) to the model it was trained on"
        )
    local = Path(name).expanduser()
    if local.exists():
        return str(local.resolve()), None
    return name, ingredient.adapter.revision


def attach_bases(ingredients: Sequence[Any], base_model: Any = None, **hub_options: Any) -> Any:
    """Resolve the one base of the adapter ingredients and attach it to each; return it (``None`` without adapters).

    Also gives each adapter the base's ``config`` (model type, tied weights) and
    ``directory`` (config / tokenizer files, for the soup's sidecars and evaluators), so it
    is treated like a full fine-tune of that base; the adapter's own folder stays in
    ``ingredient.files[0].parent``.
    """
    from ..ingredients.resolve import resolve_ingredient

    adapters = [i for i in ingredients if getattr(i, "adapter", None) is not None]
    if not adapters:
        return None
    if base_model is not None:
        ref, revision, where = base_model, None, "base_model"
        for adapter in adapters:
            named = adapter.adapter.base_model_name_or_path
            if named and named != str(base_model):
                logger.info("%s names base %s; using base_model: %s", adapter.name, named, base_model)
    else:
        declared = {adapter.name: _declared(adapter) for adapter in adapters}
        distinct = sorted(set(declared.values()), key=str)
        if len(distinct) > 1:
            lines = "\n".join(f"  {name}: {base}" + (f"@{rev}" if rev else "") for name, (base, rev) in declared.items())
            raise AdapterBaseError(
                f"the adapters were trained on different base models:\n{lines}\n"
                "A soup of adapters needs one base. If these names are the same model, set base_model: in the "
                "recipe (--base-model); otherwise soup adapters of one base only"
            )
        (ref, revision), where = distinct[0], f"{adapters[0].name}'s base_model_name_or_path"
    try:
        base = resolve_ingredient(ref, revision=revision, **hub_options)
    except HfSoupError as error:
        raise AdapterBaseError(
            f"the base model {ref!r} ({where}) cannot be resolved: {error}. Set base_model: in the recipe "
            "(--base-model) to a local folder or Hub repo of the base"
        ) from None
    if getattr(base, "adapter", None) is not None:
        raise AdapterBaseError(f"the base model {ref!r} ({where}) is itself an adapter; give the full base model")
    for adapter in adapters:
        adapter.base = base
        adapter.config = base.config
        adapter.directory = base.directory
    return base


def adapters_report(ingredients: Sequence[Any], base: Any) -> dict[str, Any] | None:
    """``report["adapters"]``: the base and each adapter's LoRA settings (for the card and reproduction)."""
    adapters = [i for i in ingredients if getattr(i, "adapter", None) is not None]
    if not adapters or base is None:
        return None
    rows = []
    for ingredient in adapters:
        config = ingredient.adapter
        rows.append({
            "ref": ingredient.name, "repo_id": ingredient.repo_id, "sha": ingredient.sha,
            "r": config.r, "lora_alpha": config.alpha, "use_rslora": config.use_rslora,
            "rank_pattern": config.rank_pattern, "alpha_pattern": config.alpha_pattern,
            "target_modules": config.raw.get("target_modules"),
            "modules_to_save": list(config.modules_to_save),
            "base_model_name_or_path": config.base_model_name_or_path,
        })
    return {
        "base_model": {"ref": base.name, "repo_id": base.repo_id, "sha": base.sha},
        "ingredients": rows,
        "full_model_ingredients": [i.name for i in ingredients if getattr(i, "adapter", None) is None],
    }
