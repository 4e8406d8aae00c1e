"""A resolved ingredient: where its weights are, its config, and its revision."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptWeightsError
from ..io.safetensors_reader import MultiFileSource, SafetensorsFile
from ..io.source import TensorSource
from ..io.torch_source import StateDictSource, load_torch_checkpoint
from .ref import IngredientRef


@dataclass
class Ingredient:
    """One checkpoint ready to be read tensor by tensor.

    ``directory`` holds its config / tokenizer files (``None`` for a bare weight file or
    a state dict); ``sha`` is the resolved Hub commit (``None`` for local ingredients).
    A PEFT adapter has ``weight_format == "adapter"``, its LoRA config in ``adapter`` and,
    once :func:`hf_soup.adapters.attach_bases` ran, its base model in ``base`` (and the
    base's ``config`` and ``directory``); it then reads as the full model ``base + ΔW``.
    ``card_data`` is a Hub ingredient's model card metadata (license, pipeline tag...).
    """

    ref: IngredientRef
    weight_format: str
    files: list[Path] = field(default_factory=list)
    directory: Path | None = None
    sha: str | None = None
    config: dict[str, Any] | None = None
    adapter: Any = None
    base: "Ingredient | None" = None
    card_data: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.ref)

    @property
    def repo_id(self) -> str | None:
        """The Hub repo ID, for Hub ingredients."""
        return self.ref.name if self.ref.kind == "hub" else None

    def open(self) -> TensorSource:
        """Open the weights lazily; close the result (or use it as a context manager)."""
        if self.weight_format == "state_dict":
            return StateDictSource(self.ref.state_dict, origin=self.name)
        if self.weight_format == "bin":
            parts = [load_torch_checkpoint(f) for f in self.files]
        else:
            parts = [SafetensorsFile(f) for f in self.files]
        return parts[0] if len(parts) == 1 else MultiFileSource(parts, origin=self.name)


def read_config(directory: Path | None) -> dict[str, Any] | None:
    """``config.json`` of ``directory`` as a dict, or ``None`` when there is none."""
    if directory is None or not (directory / "config.json").is_file():
        return None
    try:
        return json.loads((directory / "config.json").read_text())
    except ValueError as error:
        raise CorruptWeightsError(f"{directory / 'config.json'}: not valid JSON ({error})") from None
