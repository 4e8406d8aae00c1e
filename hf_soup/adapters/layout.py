"""Where an adapter's targets live in the base checkpoint, and how they are stored.

PEFT saves adapter keys with the *in-memory* module names of the model it wrapped
(``vit.layers.0.attention.q_proj``), while a transformers 5 checkpoint on disk may use
other names for the same weight (``vit.encoder.layer.0.attention.attention.query``):
``from_pretrained`` renames on load and ``save_pretrained`` renames back. This module
maps a module's parameter name to the checkpoint key with transformers' own conversion
mapping (``get_model_conversion_mapping``, reversed exactly as ``save_pretrained`` does,
through :mod:`hf_soup.compat.transformers_keys`)
and refuses targets whose conversion is more than a rename (fused or split weights).

It also tells how a target stores its weight: ``nn.Linear`` as ``(out, in)``, GPT-2's
``Conv1D`` transposed as ``(in, out)``. The shapes decide for non-square weights. For
square ones PEFT decides from the module class (it overrides ``fan_in_fan_out`` to
match), so the class is read from the base model built on the ``meta`` device (no
memory, no weights) — unless the architecture's modeling file cannot hold a ``Conv1D``
(it neither names ``Conv1D`` nor imports other models), which spares importing
transformers (about 3 s) for most LLMs. Without a buildable config the adapter's
``fan_in_fan_out`` decides.

>>> layout = BaseLayout({"model.layers.0.mlp.up_proj.weight"}, directory=None)
>>> layout.checkpoint_key("model.layers.0.mlp.up_proj.weight", "adapter")
'model.layers.0.mlp.up_proj.weight'
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..errors import AdapterBaseError, UnsupportedAdapterError

logger = logging.getLogger("hf_soup")


@lru_cache(maxsize=4)
def _meta_model(directory: str, class_hint: str | None) -> Any:
    """The base model built on the ``meta`` device from ``directory/config.json``, or ``None``."""
    try:
        import torch
        import transformers

        config = transformers.AutoConfig.from_pretrained(directory)
        names = [n for n in [class_hint, *(getattr(config, "architectures", None) or [])] if n]
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
        with torch.device("meta"):
            if cls is not None:
                return cls._from_config(config)
            return transformers.AutoModel.from_config(config)
    except Exception as error:  # custom code, unknown architecture...: fall back to names and shapes
        logger.info("cannot build the base model of %s on the meta device (%s); using checkpoint names and shapes", directory, error)
        return None


@lru_cache(maxsize=32)
def may_hold_conv1d(model_type: str | None) -> bool:
    """Whether models of ``model_type`` may contain ``Conv1D`` layers (``True`` when unsure).

    Reads the architecture's modeling source as text, without importing transformers.
    """
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if not model_type or spec is None or not spec.submodule_search_locations:
        return True
    name = model_type.replace("-", "_")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name / f"modeling_{name}.py"
    try:
        text = path.read_text()
    except OSError:
        return True
    return "Conv1D" in text or re.search(r"^\s*from \.\.\w+", text, re.MULTILINE) is not None


@lru_cache(maxsize=4)
def _reverse_rules(directory: str, class_hint: str | None) -> tuple[list, list]:
    """(renamings, converters) turning in-memory names into checkpoint names, as ``save_pretrained`` does."""
    model = _meta_model(directory, class_hint)
    if model is None:
        return [], []
    from ..compat.transformers_keys import reverse_rules

    return reverse_rules(model)


class BaseLayout:
    """Checkpoint keys and storage layout of one base model.

    ``base_keys`` are the keys of the base checkpoint; ``directory`` holds its
    ``config.json`` (``None``: names must match as they are); ``class_hint`` is the model
    class PEFT wrapped (``auto_mapping.base_model_class`` in the adapter config).
    """

    def __init__(self, base_keys: Iterable[str], directory: Path | None, class_hint: str | None = None):
        self.base_keys = set(base_keys)
        self.directory = str(directory) if directory is not None and (Path(directory) / "config.json").is_file() else None
        self.class_hint = class_hint
        self.model_type = None
        if self.directory:
            try:
                self.model_type = json.loads((Path(self.directory) / "config.json").read_text()).get("model_type")
            except (OSError, ValueError):
                self.model_type = None

    def _model(self) -> Any:
        return _meta_model(self.directory, self.class_hint) if self.directory else None

    def checkpoint_key(self, name: str, origin: str) -> str:
        """The base checkpoint key holding in-memory parameter ``name``.

        Raises :class:`UnsupportedAdapterError` when transformers stores it through a
        conversion other than a rename, :class:`AdapterBaseError` when the base lacks it.
        """
        if name in self.base_keys:
            return name
        tried = [name]
        if self.directory:
            from ..compat.transformers_keys import reverse_rename

            renamings, converters = _reverse_rules(self.directory, self.class_hint)
            renamed, converted = reverse_rename(name, renamings, converters)
            if converted is not None:
                raise UnsupportedAdapterError(
                    f"{origin}: the adapter targets {name!r}, which the checkpoint stores through a transformers "
                    f"conversion that fuses or splits weights (on disk: {converted!r}), not a plain rename; LoRA on "
                    "such weights is not merged. Merge the adapter with PEFT's merge_and_unload(), save the model, "
                    "and use it as a full-model ingredient (or retrain without targeting this module)"
                )
            tried.append(renamed)
            model = self._model()
            prefix = getattr(model, "base_model_prefix", "") if model is not None else ""
            for candidate in (renamed, name):
                if prefix and candidate.startswith(prefix + "."):
                    tried.append(candidate[len(prefix) + 1:])
                elif prefix:
                    tried.append(f"{prefix}.{candidate}")
            for candidate in tried[1:]:
                if candidate in self.base_keys:
                    return candidate
        raise AdapterBaseError(
            f"{origin}: the adapter changes {name!r}, but the base checkpoint has no such tensor "
            f"(tried {', '.join(dict.fromkeys(tried))}); the adapter was trained on another base model — set "
            "base_model: in the recipe to the model it was trained on (a weight the base ties to another, such as "
            "lm_head to the embeddings, cannot carry a LoRA update either)"
        )

    def module_kind(self, module: str) -> str | None:
        """``"linear"``, ``"conv1d"`` (transposed storage), ``"embedding"``, another class name, or ``None`` if unknown."""
        if self.directory and not may_hold_conv1d(self.model_type):
            return "linear"
        model = self._model()
        if model is None:
            return None
        try:
            target = model.get_submodule(module)
        except AttributeError:
            return None
        import torch

        from transformers.pytorch_utils import Conv1D

        if isinstance(target, Conv1D):
            return "conv1d"
        if isinstance(target, torch.nn.Linear):
            return "linear"
        if isinstance(target, torch.nn.Embedding):
            return "embedding"
        return type(target).__name__
