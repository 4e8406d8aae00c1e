"""Module paths of earlier releases, kept importable: ``import hf_soup.callbacks`` still works.

Each old path is an alias of the module that now holds the code (the same module object, so
``monkeypatch`` and ``isinstance`` behave alike under both names). Old sub-package paths map
by prefix: ``hf_soup.learned.bcd`` is ``hf_soup.methods.learned.bcd``.

>>> import hf_soup.callbacks, hf_soup.training.callback
>>> hf_soup.callbacks is hf_soup.training.callback
True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED: dict[str, str] = {
    "hf_soup.callbacks": "hf_soup.training.callback",
    "hf_soup.hub_cli": "hf_soup.cli.hub",
    "hf_soup.demo": "hf_soup.cli.demo",
    "hf_soup.hub": "hf_soup.output.push",
    "hf_soup.report": "hf_soup.output.report",
    "hf_soup.card": "hf_soup.output.card",
    "hf_soup.reference_scores": "hf_soup.scores",
    "hf_soup.learned": "hf_soup.methods.learned",
    "hf_soup.learned.full_graph": "hf_soup.testing.learned_reference",
    "hf_soup.learned.memory": "hf_soup.testing.memory",
    "hf_soup.methods.ame_functional": "hf_soup.methods.ame.functional",
    "hf_soup.methods.ame_greedy": "hf_soup.methods.ame.greedy",
    "hf_soup.methods.ame_optim": "hf_soup.methods.ame.optim",
    "hf_soup.methods.ame_schedule": "hf_soup.methods.ame.schedule",
    "hf_soup.adapters.output": "hf_soup.adapters.export",
    "hf_soup.adapters.resolve": "hf_soup.adapters.detect",
    "hf_soup.training.report": "hf_soup.training.annotate",
}


def new_path(name: str) -> str | None:
    """Where module ``name`` lives now, or ``None`` when it did not move.

    >>> new_path("hf_soup.learned.bcd")
    'hf_soup.methods.learned.bcd'
    >>> new_path("hf_soup.pipeline") is None
    True
    """
    if name in MOVED:
        return MOVED[name]
    package, _, rest = name.rpartition(".")
    while package:
        if package in MOVED:
            return f"{MOVED[package]}.{rest}"
        package, _, head = package.rpartition(".")
        rest = f"{head}.{rest}"
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target module already ran; give it back its own ``__spec__`` (the import system set the alias's)."""
        module.__spec__ = self.spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds old module paths and answers with the module that replaced them."""

    def find_spec(self, name, path=None, target=None):
        moved = new_path(name)
        return importlib.util.spec_from_loader(name, _Alias(moved)) if moved else None


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
