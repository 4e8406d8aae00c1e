"""PEFT LoRA adapters as soup ingredients, and soups written back as adapters.

An adapter ingredient reads as the full model ``base + scale · B @ A`` (exact, streamed
per tensor: :mod:`.source`); :mod:`.export` writes a soup of adapters as one LoRA
adapter (stacked factors, or a truncated SVD).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoraAdapterConfig", "adapters_report", "attach_bases"]

_LAZY = {"LoraAdapterConfig": ".config", "adapters_report": ".bases", "attach_bases": ".bases"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # lazy: the ingredients import this package, and bases.py resolves ingredients
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
