"""PEFT LoRA adapters as soup ingredients, and soups written back as adapters.

An adapter ingredient reads as the full model ``base + scale · B @ A`` (exact, streamed
per tensor: :mod:`.source`); :mod:`.output` writes a soup of adapters as one LoRA
adapter (stacked factors, or a truncated SVD).
"""

from .bases import adapters_report, attach_bases
from .config import LoraAdapterConfig

__all__ = ["LoraAdapterConfig", "adapters_report", "attach_bases"]
