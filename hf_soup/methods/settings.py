"""Parameter values that may vary per ingredient and per tensor, as MergeKit writes them.

A *setting* is a scalar, or a list of ``{filter, value}`` conditions: the first whose
``filter`` is a substring of the tensor's name (or is absent / ``"*"``) gives the value.
A *per-ingredient* setting is one setting for every ingredient, or a list of settings,
one per ingredient::

    density: 0.5                                  # every ingredient, every tensor
    density: [0.5, 0.7]                           # one per ingredient
    density: [{filter: mlp, value: 0.3}, {value: 0.5}]   # per tensor, every ingredient

Gradients (lists of numbers interpolated across layers) are not supported.

>>> resolve([{"filter": "mlp", "value": 0.3}, {"value": 0.5}], "layers.0.mlp.up_proj.weight")
0.3
>>> per_ingredient([0.5, [{"value": 0.7}]], 2, "w")
[0.5, 0.7]
"""

from __future__ import annotations

from typing import Any, Callable, Union

from pydantic import BaseModel, ConfigDict

Scalar = float


class Condition(BaseModel):
    """``value`` for the tensors whose name contains ``filter`` (absent or ``"*"``: every tensor)."""

    model_config = ConfigDict(extra="forbid")
    filter: str | None = None
    value: Scalar


Setting = Union[Scalar, list[Condition]]
PerIngredient = Union[Setting, list[Setting]]


def _is_conditions(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, (Condition, dict)) for v in value)


def resolve(setting: Any, key: str) -> Any:
    """The value of ``setting`` for tensor ``key`` (``None`` when no condition matches)."""
    if not isinstance(setting, list):
        return setting
    for condition in setting:
        condition = condition if isinstance(condition, Condition) else Condition.model_validate(condition)
        if condition.filter in (None, "*") or condition.filter in key:
            return condition.value
    return None


def is_per_ingredient(setting: Any) -> bool:
    """Whether ``setting`` lists one setting per ingredient (rather than one for all)."""
    return isinstance(setting, list) and not _is_conditions(setting)


def per_ingredient(setting: Any, count: int, key: str) -> list[Any]:
    """One value per ingredient for tensor ``key``."""
    if is_per_ingredient(setting):
        return [resolve(item, key) for item in setting]
    return [resolve(setting, key)] * count


def all_values(setting: Any) -> list[Any]:
    """Every value ``setting`` can take (for range checks before any work)."""
    items = setting if is_per_ingredient(setting) else [setting]
    values = []
    for item in items:
        if isinstance(item, list):
            values += [c.value if isinstance(c, Condition) else c["value"] for c in item]
        else:
            values.append(item)
    return values


def check(setting: Any, name: str, count: int | None, valid: Callable[[Any], bool], requirement: str) -> list[str]:
    """Problems with ``setting``: a per-ingredient list of the wrong length, out-of-range values."""
    problems = []
    if count is not None and is_per_ingredient(setting) and len(setting) != count:
        problems.append(f"method.{name}: got {len(setting)} values for {count} ingredients; give one per ingredient "
                        "or one for all")
    bad = [v for v in all_values(setting) if v is not None and not valid(v)]
    if bad:
        problems.append(f"method.{name}: {bad[0]!r} is out of range; {requirement}")
    return problems
