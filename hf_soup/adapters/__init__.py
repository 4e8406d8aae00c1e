"""PEFT LoRA adapters as soup ingredients, and soups written back as adapters.

An adapter ingredient reads as the full model ``base + scale · B @ A`` (exact, streamed
per tensor: :mod:`.source`); :mod:`.export` writes a soup of adapters as one LoRA
adapter (stacked factors, or a truncated SVD).
"""

from __future__ import annotations

from ..lazy import lazy_exports

__all__ = ["LoraAdapterConfig", "adapters_report", "attach_bases"]

# lazy: the ingredients import this package, and bases.py resolves ingredients
_LAZY = {"LoraAdapterConfig": ".config", "adapters_report": ".bases", "attach_bases": ".bases"}


__getattr__ = lazy_exports(__name__, _LAZY)
