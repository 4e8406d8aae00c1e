"""Lazy package exports: a name is imported from its module on first use, not when the package is.

A package lists ``{name: module}`` (relative to itself or absolute) and sets its
module-level ``__getattr__`` from :func:`lazy_exports`, so importing the package stays
cheap (no torch) and packages that import each other do not run in a cycle.

>>> __getattr__ = lazy_exports("hf_soup", {"merge_state_dicts": ".api"})
>>> __getattr__("merge_state_dicts").__name__
'merge_state_dicts'
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``table[name]`` when asked."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
