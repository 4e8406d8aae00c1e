"""Write a soup of LoRA adapters as one LoRA adapter (``output.format: adapter``).

A soup is ``Σ_k w_k (base + ΔW_k) = base + Σ_k w_k ΔW_k`` when the weights sum to 1, so
only methods linear in ΔW qualify: uniform, weighted, and data-driven plans that end in
one of them (greedy, RADIN, learned), and task arithmetic (``base + λ Σ_k w_k ΔW_k``, any
weights). Per target weight the output holds

* ``rank: concat`` (default) — the stacked weighted factors, rank ``Σ r_k``: exact;
* ``rank: <int>`` — the best rank-``int`` approximation (truncated SVD, computed from the
  factors without building ΔW), with each tensor's relative Frobenius error reported.

``modules_to_save`` tensors are souped in full and saved as such. The result loads with
``PeftModel.from_pretrained(base, path)``.

>>> info = write_adapter_soup(staging, ingredients, sources, plan, base, rank="concat")  # doctest: +SKIP
>>> info["max_relative_error"]  # doctest: +SKIP
0.0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import MethodParameterError, RecipeError
from ..io import dtypes
from ..io.source import TensorMeta
from ..io.writer import SafetensorsWriter
from .config import CONFIG_FILE, WEIGHTS_FILE
from .lowrank import concat, truncate
from .source import PEFT_PREFIX, AdapterSource

_WEIGHT_TOLERANCE = 1e-6


def check_adapter_method(method: Any) -> None:
    """Refuse, before any work, a method whose soup is not linear in the ingredients' ΔW."""
    from ..methods.base import PlanningMethod
    from ..methods.registry import available_methods, get_method_class

    if isinstance(method, PlanningMethod) or method.is_linear():
        return
    linear = [name for name in available_methods() if getattr(get_method_class(name), "is_linear", lambda: False)()]
    raise RecipeError(
        f"output.format: adapter needs a soup that is a weighted average of the adapters' updates "
        f"(methods {', '.join(linear)}, or greedy / RADIN plans); method {method.name!r} is not linear in ΔW. "
        "Use output.format: model to write the full merged model"
    )


def adapter_weights(method: Any, count: int, key: str | None = None) -> list[float]:
    """The coefficients ``w_k`` the plan's tensor method applies to tensor ``key`` (its :meth:`linear_weights`)."""
    weights = method.linear_weights(count, key)
    if weights is not None:
        return list(weights)
    raise RecipeError(
        f"output.format: adapter: the plan merges with {method.name!r}, which is not a weighted average of the "
        "adapters' updates; use output.format: model"
    )


def check_adapter_plan(plan: Any, ingredients: Sequence[Any]) -> None:
    """Refuse plans an adapter cannot express: weights not summing to 1, kept full-model ingredients."""
    count = len(plan.ingredients)
    method = plan.method
    keys = [None] + list(getattr(method.params, "per_tensor", {}) or {})
    for key in keys:
        weights = adapter_weights(method, count, key)
        if not getattr(method, "uses_base", "never") != "never" and abs(sum(weights) - 1.0) > _WEIGHT_TOLERANCE:
            where = "method.weights" if key is None else f"method.per_tensor[{key!r}]"
            raise MethodParameterError(
                f"{where}: sum to {sum(weights):g}; an adapter soup is base + Σ w_k ΔW_k only when the weights sum "
                "to 1 — set normalize: true, or use output.format: model"
            )
        for position, weight in zip(plan.ingredients, weights):
            if weight and ingredients[position].adapter is None:
                raise RecipeError(
                    f"output.format: adapter: ingredient {ingredients[position].name} is a full model; its update is "
                    "not low-rank, so the soup cannot be written as a LoRA adapter. Use output.format: model"
                )


def _lora_tensors(module: str, kind: str, left: np.ndarray, right: np.ndarray) -> dict[str, np.ndarray]:
    """PEFT tensors for ``ΔW = left @ right`` (scale 1) of a module of ``kind``."""
    prefix = PEFT_PREFIX + module
    if kind == "linear":
        return {f"{prefix}.lora_A.weight": right, f"{prefix}.lora_B.weight": left}
    if kind == "conv1d":
        return {f"{prefix}.lora_A.weight": left.T, f"{prefix}.lora_B.weight": right.T}
    return {f"{prefix}.lora_embedding_A": left.T, f"{prefix}.lora_embedding_B": right.T}


def _adapter_config(ingredients: Sequence[Any], base: Any, ranks: dict[str, int], kinds: dict[str, str],
                    modules_to_save: list[str]) -> dict[str, Any]:
    first = next(i.adapter for i in ingredients if i.adapter is not None)
    top = max(ranks.values(), default=1)
    return {
        "peft_type": "LORA",
        "task_type": first.raw.get("task_type"),
        "auto_mapping": first.raw.get("auto_mapping"),
        "base_model_name_or_path": base.repo_id or base.name,
        "revision": base.sha,
        "r": top,
        "lora_alpha": top,
        "rank_pattern": dict(ranks),
        "alpha_pattern": dict(ranks),  # alpha = r: every module has scale 1, the weights live in the factors
        "use_rslora": False,
        "target_modules": sorted(ranks),
        "fan_in_fan_out": any(kind == "conv1d" for kind in kinds.values()),
        "modules_to_save": modules_to_save or None,
        "bias": "none",
        "lora_dropout": 0.0,
        "use_dora": False,
        "inference_mode": True,
        "init_lora_weights": True,
    }


def write_adapter_soup(directory: Path, ingredients: Sequence[Any], sources: dict[int, Any], plan: Any, base: Any,
                       rank: int | str = "concat", dtype: str | None = None) -> dict[str, Any]:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``directory``; return report details."""
    positions = list(plan.ingredients)
    targets: dict[str, list[tuple[int, Any]]] = {}
    replaced: dict[str, str] = {}
    for n, index in enumerate(positions):
        source = sources[index]
        if not isinstance(source, AdapterSource):
            continue
        for key, target in source.targets.items():
            targets.setdefault(key, []).append((n, target))
        for key, (name, _) in source.replaced.items():
            replaced.setdefault(key, name)
    for key in replaced:  # a full modules_to_save soup already holds every adapter's ΔW of that tensor
        targets.pop(key, None)
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    ranks: dict[str, int] = {}
    kinds: dict[str, str] = {}
    report: dict[str, dict[str, Any]] = {}
    factor_dtype = dtype or "F32"
    for key, entries in targets.items():
        weights = adapter_weights(plan.method, len(positions), key)
        used = [(weights[n], sources[positions[n]].factors(t)) for n, t in entries if weights[n]]
        if not used:
            continue
        left, right = concat([f for _, f in used], [w for w, _ in used])
        error = 0.0
        if rank != "concat":
            left, right, error, _ = truncate(left, right, int(rank))
        module, kind = entries[0][1].module, entries[0][1].kind
        ranks[module], kinds[module] = left.shape[1], kind
        report[module] = {"key": key, "rank": left.shape[1], "input_ranks": [t.rank for _, t in entries],
                          "relative_error": error}
        for name, values in _lora_tensors(module, kind, left, right).items():
            tensors[name] = (np.ascontiguousarray(values, dtype=np.float32), factor_dtype)
    saved_modules = []
    for key, name in replaced.items():
        weights = adapter_weights(plan.method, len(positions), key)
        meta = sources[positions[0]].meta(key)
        scratch = np.empty(meta.numel, dtype=np.float32)
        if getattr(plan, "base", None) is not None:  # relative to the base: base + Σ_k c_k (θ_k − base), float64
            base_values = sources[plan.base].read_float32(key, 0, meta.numel, np.empty(meta.numel, np.float32))
            total = base_values.astype(np.float64)
            for n, index in enumerate(positions):
                if weights[n]:
                    delta = sources[index].read_float32(key, 0, meta.numel, scratch).astype(np.float64)
                    delta -= base_values
                    total += weights[n] * delta
            total = total.astype(np.float32)
        else:
            total = np.zeros(meta.numel, dtype=np.float32)
            for n, index in enumerate(positions):
                if weights[n]:
                    total += np.float32(weights[n]) * sources[index].read_float32(key, 0, meta.numel, scratch)
        tensors[PEFT_PREFIX + name] = (total.reshape(meta.shape), dtype or meta.dtype)
        saved_modules.append(name.rsplit(".", 1)[0])
    entries = [(name, TensorMeta(out_dtype, tuple(values.shape))) for name, (values, out_dtype) in sorted(tensors.items())]
    writer = SafetensorsWriter(directory / WEIGHTS_FILE, entries, metadata={"format": "pt"})
    try:
        for name, _ in entries:
            values, out_dtype = tensors[name]
            writer.append(dtypes.from_float32(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), out_dtype))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    modules_to_save = sorted({m for i in ingredients if i.adapter is not None for m in i.adapter.modules_to_save
                              if any(s == m or s.endswith("." + m) for s in saved_modules)})
    config = _adapter_config(ingredients, base, ranks, kinds, modules_to_save)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    errors = [row["relative_error"] for row in report.values()]
    return {
        "format": "adapter",
        "dtypes": sorted({meta.dtype for _, meta in entries}),
        "num_parameters": sum(meta.numel for _, meta in entries),
        "num_tensors": len(entries),
        "rank": rank,
        "num_targets": len(report),
        "total_rank": sum(ranks.values()),
        "max_relative_error": max(errors, default=0.0),
        "tensors": report,
        "modules_to_save": sorted(replaced),
        "files": [WEIGHTS_FILE, CONFIG_FILE],
    }
