"""hf_soup: model soups from Hugging Face Hub checkpoints.

>>> import hf_soup
>>> result = hf_soup.soup(["org/run-1", "org/run-2"], method="uniform", output_dir="soup")  # doctest: +SKIP

Heavy modules (torch, transformers) are imported only when a feature needs them.
"""

from __future__ import annotations

from . import moved
from ._version import __version__
from .lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _LAZY)
