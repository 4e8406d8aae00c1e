"""MergeKit configurations read as hf-soup recipes.

``hf-soup merge mergekit.yml`` runs a MergeKit YAML as it is: :func:`is_mergekit_config`
recognises it by its ``merge_method`` key, :func:`translate` turns it into a recipe
mapping (``hf-soup merge mergekit.yml --dry-run`` prints it). What hf-soup cannot express
is refused with an error that names the key: ``slices`` / ``modules`` (frankenmerges),
``passthrough`` and other methods hf-soup lacks, gradient parameter lists, tokenizer
unions, chat templates, LoRA-on-the-fly model references.

Translation: ``models`` -> ``ingredients`` (the ``base_model`` entry of a base-relative
method is the base, not an ingredient, as in MergeKit); per-model ``parameters`` -> one
value per ingredient; ``weight`` -> ``weights``; ``out_dtype`` (else ``dtype``) ->
``output.dtype`` (hf-soup computes in float64 and rounds once, whatever MergeKit's
``dtype``); ``tokenizer_source: <a model>`` -> ``output.config_from``.

>>> translate({"merge_method": "ties", "base_model": "org/base",
...            "models": [{"model": "org/a", "parameters": {"weight": 1, "density": 0.5}}, {"model": "org/base"}],
...            "parameters": {"normalize": True}, "dtype": "bfloat16"})["method"]
{'name': 'ties', 'normalize': True, 'density': [0.5], 'weights': [1]}
"""

from __future__ import annotations

from typing import Any

from .errors import RecipeError

#: MergeKit method -> hf-soup method.
METHODS = {
    "linear": "weighted", "task_arithmetic": "task_arithmetic", "ties": "ties", "dare_linear": "dare_linear",
    "dare_ties": "dare_ties", "breadcrumbs": "breadcrumbs", "breadcrumbs_ties": "breadcrumbs_ties",
    "della": "della", "della_linear": "della_linear", "model_stock": "model_stock", "slerp": "slerp",
    "nuslerp": "nuslerp",
}
_TASK_VECTOR = {"int8_mask", "normalize", "rescale", "lambda", "weight", "density"}
#: Accepted MergeKit parameters per method, and their hf-soup names (per-model ones marked in _PER_MODEL).
PARAMETERS: dict[str, dict[str, str]] = {
    **{name: {p: ("weights" if p == "weight" else p) for p in _TASK_VECTOR}
       for name in ("task_arithmetic", "ties", "dare_linear", "dare_ties")},
    **{name: {**{p: ("weights" if p == "weight" else p) for p in _TASK_VECTOR}, "gamma": "gamma"}
       for name in ("breadcrumbs", "breadcrumbs_ties")},
    **{name: {**{p: ("weights" if p == "weight" else p) for p in _TASK_VECTOR}, "epsilon": "epsilon"}
       for name in ("della", "della_linear")},
    "linear": {"weight": "weights", "normalize": "normalize"},
    "model_stock": {"filter_wise": "filter_wise"},
    "slerp": {"t": "t"},
    "nuslerp": {"weight": "weights", "nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"},
}
_PER_MODEL = {"weight", "density", "gamma", "epsilon"}
_NUMERIC = {"weight", "density", "gamma", "epsilon", "lambda", "t"}
_BASE_RELATIVE = {"task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
                  "della", "della_linear", "model_stock", "nuslerp"}
_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source"}
_REFUSED_KEYS = {
    "slices": "slices (layer-range frankenmerges) cannot be expressed: hf-soup merges whole models tensor by tensor",
    "modules": "modules (per-module slices) cannot be expressed: hf-soup merges whole models tensor by tensor",
    "tokenizer": "tokenizer settings cannot be expressed: hf-soup copies one ingredient's tokenizer "
                 "(tokenizer_source: <a model>)",
    "chat_template": "chat_template cannot be expressed: hf-soup copies one ingredient's tokenizer files as they are",
}


def is_mergekit_config(data: Any) -> bool:
    """Whether ``data`` (a parsed YAML mapping) is a MergeKit configuration rather than a recipe."""
    return isinstance(data, dict) and "merge_method" in data and "ingredients" not in data


def _fail(where: str, message: str) -> RecipeError:
    return RecipeError(f"MergeKit config: {where}: {message}")


def _model_ref(value: Any, where: str) -> str:
    """A MergeKit model reference (``org/name[@revision]`` or a path) as an hf-soup ingredient reference."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"model", "path", "revision"})
        if unknown or "lora" in value:
            raise _fail(where, f"{', '.join(unknown) or 'lora'} cannot be expressed; give the model as a string")
        inner = value.get("model", value)
        path = inner.get("path") if isinstance(inner, dict) else inner
        revision = inner.get("revision") if isinstance(inner, dict) else value.get("revision")
        value = f"{path}@{revision}" if revision else path
    if not isinstance(value, str) or not value:
        raise _fail(where, "expected a model reference (Hub repo ID or path)")
    if "+" in value:
        raise _fail(where, f"{value!r} applies a LoRA on the fly (model+lora), which cannot be expressed; "
                    "merge the LoRA into the model first, or give the adapter folder as an ingredient")
    return value


def _setting(value: Any, where: str, numeric: bool) -> Any:
    """A MergeKit parameter value as an hf-soup setting; gradients are refused."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if not value:
            raise _fail(where, "an empty list is not a value")
        if all(not isinstance(v, (dict, list)) for v in value):
            raise _fail(where, f"gradient lists ({value}: values interpolated across layers) are not supported; "
                        "give one value, or per-tensor values as [{filter: NAME, value: V}, ...]")
        if not numeric:
            raise _fail(where, "per-tensor conditions cannot be expressed for this parameter; give one value")
        conditions = []
        for n, item in enumerate(value):
            if not isinstance(item, dict) or "value" not in item or set(item) - {"filter", "value"}:
                raise _fail(f"{where}[{n}]", "expected {filter: NAME, value: V}")
            if isinstance(item["value"], list):
                raise _fail(f"{where}[{n}].value", "gradient lists (values interpolated across layers) are not "
                            "supported; give one value")
            conditions.append({k: item[k] for k in ("filter", "value") if k in item})
        return conditions
    return value


def _models(config: dict[str, Any], method: str, base: str | None) -> tuple[list[str], list[dict[str, Any]]]:
    models = config.get("models")
    if not isinstance(models, list) or not models:
        raise _fail("models", "expected a list of {model: REF, parameters: {...}} entries")
    refs, params = [], []
    for n, entry in enumerate(models):
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "model" not in entry:
            raise _fail(f"models[{n}]", "expected {model: REF, parameters: {...}}")
        unknown = sorted(set(entry) - {"model", "parameters"})
        if unknown:
            raise _fail(f"models[{n}].{unknown[0]}", "unknown key; a model entry has model and parameters")
        ref = _model_ref(entry["model"], f"models[{n}].model")
        if base is not None and ref == base and method in _BASE_RELATIVE:
            continue  # MergeKit treats the base model's entry as the base, not as an ingredient
        refs.append(ref)
        params.append((n, entry.get("parameters") or {}))
    if method == "slerp":
        if base is None:
            raise _fail("base_model", "slerp needs base_model (the t = 0 end); add it")
        others = [(ref, p) for ref, p in zip(refs, params) if ref != base]
        if len(others) != 1:
            raise _fail("models", f"slerp merges the base model with exactly one other model; got {len(others)} others")
        refs, params = [base, others[0][0]], [(None, {}), others[0][1]]
    return refs, params


def _method(config: dict[str, Any], method: str, params: list[tuple[int | None, dict[str, Any]]]) -> dict[str, Any]:
    accepted = PARAMETERS[method]
    shared = config.get("parameters") or {}
    if not isinstance(shared, dict):
        raise _fail("parameters", "expected a mapping of parameter names to values")
    result: dict[str, Any] = {"name": METHODS[method]}
    for key, value in shared.items():
        if key not in accepted:
            raise _fail(f"parameters.{key}", f"not a parameter of {method} (accepted: {', '.join(sorted(accepted))})")
        if key not in _PER_MODEL:
            result[accepted[key]] = _setting(value, f"parameters.{key}", key in _NUMERIC)
    for n, model_params in params:
        if not isinstance(model_params, dict):
            raise _fail(f"models[{n}].parameters", "expected a mapping")
        for key in model_params:
            if key not in accepted or key not in _PER_MODEL:
                raise _fail(f"models[{n}].parameters.{key}",
                            f"not a per-model parameter of {method} (accepted: "
                            f"{', '.join(sorted(k for k in accepted if k in _PER_MODEL)) or 'none'})")
    for key in sorted(k for k in accepted if k in _PER_MODEL):
        values = [model_params.get(key, shared.get(key)) for _, model_params in params]
        if method == "slerp" or all(v is None for v in values):
            continue
        where = [f"models[{n}].parameters.{key}" if key in p else f"parameters.{key}" for n, p in params]
        if any(v is None for v in values):
            missing = [w.split(".")[0] for w, v in zip(where, values) if v is None]
            raise _fail(f"{missing[0]}.parameters.{key}", f"missing; give {key} for every model or in parameters")
        settings = [_setting(v, w, method != "linear") for v, w in zip(values, where)]
        result[accepted[key]] = settings
    return result


def translate(config: Any, source: str = "MergeKit config") -> dict[str, Any]:
    """The hf-soup recipe mapping equivalent to MergeKit configuration ``config``."""
    if not isinstance(config, dict):
        raise RecipeError(f"{source}: expected a MergeKit configuration mapping")
    for key in config:
        if key in _REFUSED_KEYS:
            raise _fail(key, _REFUSED_KEYS[key])
        if key not in _KEYS:
            raise _fail(key, f"unknown or unsupported key (hf-soup reads {', '.join(sorted(_KEYS))})")
    method = config.get("merge_method")
    if method not in METHODS:
        hint = ("passthrough copies layers (frankenmerges), which cannot be expressed" if method == "passthrough"
                else f"hf-soup has no {method!r} method")
        raise _fail("merge_method", f"{hint}; supported: {', '.join(sorted(METHODS))}")
    base = _model_ref(config["base_model"], "base_model") if config.get("base_model") is not None else None
    refs, params = _models(config, method, base)
    recipe: dict[str, Any] = {"ingredients": refs, "method": _method(config, method, params)}
    if base is not None and method in _BASE_RELATIVE:
        recipe["base_model"] = base
    dtype = config.get("out_dtype") or config.get("dtype")
    if dtype is not None:
        recipe["output"] = {"dtype": dtype}
    tokenizer = config.get("tokenizer_source")
    if tokenizer is not None:
        target = base if tokenizer == "base" else tokenizer
        if tokenizer == "union" or target not in refs:
            raise _fail("tokenizer_source", f"{tokenizer!r} cannot be expressed: hf-soup copies config and tokenizer "
                        "files from one ingredient; name one of the models (or remove the key)")
        recipe.setdefault("output", {})["config_from"] = refs.index(target)
    return recipe
