"""Recognise a PEFT adapter folder and turn it into an :class:`~hf_soup.adapters.source.AdapterIngredient`.

>>> ingredient = resolve_adapter(IngredientRef("local", "./lora-run"), Path("./lora-run"))  # doctest: +SKIP
>>> ingredient.weight_format  # doctest: +SKIP
'adapter'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NoWeightsError
from .config import CONFIG_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE, LoraAdapterConfig
from .source import AdapterIngredient


def is_adapter_folder(path: Path) -> bool:
    """Whether ``path`` holds a PEFT adapter (``adapter_config.json``)."""
    return (path / CONFIG_FILE).is_file()


def resolve_adapter(ref: Any, path: Path, sha: str | None = None) -> AdapterIngredient:
    """An adapter ingredient; its options are validated now, before any merge work."""
    config = LoraAdapterConfig.read(path)
    for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE):
        if (path / name).is_file():
            return AdapterIngredient(ref, "adapter", [path / name], directory=path, sha=sha, adapter=config)
    raise NoWeightsError(
        f"{ref}: {path} has {CONFIG_FILE} but no {WEIGHTS_FILE} (or {LEGACY_WEIGHTS_FILE}); "
        "the adapter folder is incomplete — save it again with save_pretrained"
    )
