"""hf_soup: model soups from Hugging Face Hub checkpoints.

>>> import hf_soup
>>> result = hf_soup.soup(["org/run-1", "org/run-2"], method="uniform", output_dir="soup")  # doctest: +SKIP

Heavy modules (torch, transformers) are imported only when a feature needs them.
"""

from __future__ import annotations

from typing import Any

from . import moved
from ._version import __version__

moved.install()

_LAZY = {
    "soup": "hf_soup.api",
    "merge_state_dicts": "hf_soup.api",
    "evaluate": "hf_soup.scores",
    "SoupResult": "hf_soup.pipeline",
    "run_recipe": "hf_soup.pipeline",
    "load_recipe": "hf_soup.recipe",
    "register_method": "hf_soup.methods.registry",
    "available_methods": "hf_soup.methods.registry",
    "SoupCallback": "hf_soup.training.callback",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_soup' has no attribute {name!r}")
