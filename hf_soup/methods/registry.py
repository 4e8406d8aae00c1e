"""Soup methods registered by name.

Built-in methods are listed by import path so that ``hf-soup`` starts without importing
torch; third-party methods register with the :func:`register_method` decorator::

    @register_method
    class MySoup(TensorMethod):
        name = "my_soup"
        ...
"""

from __future__ import annotations

import re

import importlib
from typing import Any, Mapping

from pydantic import ValidationError

from ..errors import MethodParameterError, UnknownMethodError
from .base import SoupMethod

_BUILTIN: dict[str, str] = {
    "uniform": "hf_soup.methods.uniform:UniformSoup",
    "weighted": "hf_soup.methods.weighted:WeightedSoup",
    "ame": "hf_soup.methods.ame.method:AmeSoup",
    "ame_greedy": "hf_soup.methods.ame.greedy:GreedyAme",
    "greedy": "hf_soup.methods.greedy:GreedySoup",
    "radin": "hf_soup.methods.radin:RadinSoup",
    "learned": "hf_soup.methods.learned.method:LearnedSoup",
    "task_arithmetic": "hf_soup.methods.task_arithmetic:TaskArithmeticSoup",
    "ties": "hf_soup.methods.ties:TiesSoup",
    "dare_linear": "hf_soup.methods.dare_linear:DareLinearSoup",
    "dare_ties": "hf_soup.methods.dare_ties:DareTiesSoup",
    "breadcrumbs": "hf_soup.methods.breadcrumbs:BreadcrumbsSoup",
    "breadcrumbs_ties": "hf_soup.methods.breadcrumbs_ties:BreadcrumbsTiesSoup",
    "della": "hf_soup.methods.della:DellaSoup",
    "della_linear": "hf_soup.methods.della_linear:DellaLinearSoup",
    "model_stock": "hf_soup.methods.model_stock:ModelStockSoup",
    "slerp": "hf_soup.methods.slerp:SlerpSoup",
    "nuslerp": "hf_soup.methods.nuslerp:NuSlerpSoup",
}
_REGISTERED: dict[str, type[SoupMethod]] = {}
ENSEMBLE_IS_NOT_A_SOUP = (
    "method: 'ensemble' is a reference score, not a soup: the logit ensemble averages the ingredients' outputs "
    "(N forward passes at inference) and has no weights to write; get its score with "
    "`hf-soup evaluate REF... --eval-dataset D` (hf_soup.evaluate(...) in Python), or next to a soup with "
    "`hf-soup merge ... --compare` (compare: true)"
)


def register_method(cls: type[SoupMethod]) -> type[SoupMethod]:
    """Class decorator: make ``cls`` available as ``method: <cls.name>``."""
    _REGISTERED[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Names of every built-in and registered method, sorted."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_method_class(name: str) -> type[SoupMethod]:
    """Return the class registered as ``name``; raise ``UnknownMethodError`` if none."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name == "ensemble":  # a reference score (hf_soup.evaluate / --compare), nothing to write
        raise UnknownMethodError(ENSEMBLE_IS_NOT_A_SOUP)
    if name not in _BUILTIN:
        raise UnknownMethodError(
            f"method: unknown soup method {name!r}{did_you_mean(name, available_methods())}; "
            f"choose one of {', '.join(available_methods())}"
        )
    module_name, _, class_name = _BUILTIN[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    _REGISTERED[name] = cls
    return cls


def did_you_mean(name: Any, choices: Any) -> str:
    """`` (did you mean 'weights'?)`` for a close match among ``choices``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(error: ValidationError, prefix: str, known: Any = ()) -> str:
    """Turn a pydantic error into ``prefix.field: message`` lines (``known``: accepted keys, for suggestions)."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "") or "recipe"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(item["loc"][-1], known) if item["loc"] else ""
            message = (f"unknown key{hint}" if hint else
                       "unknown key (check the spelling; see the documentation for the accepted keys)")
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        names_field = message.startswith(f"{loc}.") or (loc == "recipe" and re.match(r"[A-Za-z_][\w.]*: ", message))
        lines.append(message if names_field else f"{loc}: {message}")  # no "output: output.rank ..."
    return "; ".join(lines)


def build_method(name: str, params: Mapping[str, Any] | None = None) -> SoupMethod:
    """Instantiate method ``name`` with validated ``params``.

    >>> build_method("weighted", {"weights": [1, 3]}).params.weights
    [1.0, 3.0]
    """
    cls = get_method_class(name)
    try:
        validated = cls.Params.model_validate(dict(params or {}))
    except ValidationError as error:
        raise MethodParameterError(format_validation_error(error, "method", cls.Params.model_fields)) from None
    return cls(validated)
