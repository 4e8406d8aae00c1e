"""The one place hf_soup uses transformers' internal weight-conversion API.

transformers 5 may store a weight under another key on disk than in the loaded model
(``from_pretrained`` renames, and for some models fuses or splits; ``save_pretrained``
reverts). That API lives in ``transformers.conversion_mapping`` and
``transformers.core_model_loading``, which change between minor releases (5.17 has no
``apply_converters``, 5.25 has). This module uses only what every supported version has
(each transform's ``rename_source_key`` / ``reverse_transform``,
``get_model_conversion_mapping``, ``convert_and_load_state_dict_in_model``,
``revert_weight_conversion``) and turns a missing piece into one line naming the
installed version and the supported range.

>>> renamings, converters = reverse_rules(model)                # doctest: +SKIP
>>> reverse_rename("vit.layers.0.attention.q_proj.weight", renamings, converters)  # doctest: +SKIP
('vit.encoder.layer.0.attention.attention.query.weight', None)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Mapping

from ..errors import DependencyVersionError
from .versions import check_installed, installed_version, supported_range

_API: SimpleNamespace | None = None


def api() -> SimpleNamespace:
    """transformers' conversion functions and classes, checked once per process."""
    global _API
    if _API is None:
        check_installed("transformers")
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import (
                PrefixChange,
                WeightConverter,
                WeightRenaming,
                convert_and_load_state_dict_in_model,
                revert_weight_conversion,
            )
            from transformers.modeling_utils import LoadStateDictConfig

            for cls in (WeightRenaming, WeightConverter):
                for method in ("rename_source_key", "reverse_transform"):
                    if not callable(getattr(cls, method, None)):
                        raise ImportError(f"{cls.__name__}.{method} is missing")
        except ImportError as error:
            raise DependencyVersionError(
                f"hf_soup cannot use the weight-conversion API of transformers {installed_version('transformers')} "
                f"({error}); supported: transformers{supported_range('transformers')}; run: "
                f"pip install 'transformers{supported_range('transformers')}'"
            ) from None
        _API = SimpleNamespace(
            get_model_conversion_mapping=get_model_conversion_mapping, PrefixChange=PrefixChange,
            WeightConverter=WeightConverter, WeightRenaming=WeightRenaming,
            convert_and_load_state_dict_in_model=convert_and_load_state_dict_in_model,
            revert_weight_conversion=revert_weight_conversion, LoadStateDictConfig=LoadStateDictConfig,
        )
    return _API


def reverse_rules(model: Any) -> tuple[list, list]:
    """``(renamings, converters)`` turning ``model``'s in-memory names into checkpoint names, as ``save_pretrained`` does."""
    t = api()
    conversions = [c for c in t.get_model_conversion_mapping(model, add_legacy=False) if not isinstance(c, t.PrefixChange)]
    reverse = [c.reverse_transform() for c in conversions[::-1]]
    return ([c for c in reverse if isinstance(c, t.WeightRenaming)],
            [c for c in reverse if isinstance(c, t.WeightConverter)])


def reverse_rename(name: str, renamings: list, converters: list) -> tuple[str, str | None]:
    """``(checkpoint_name, converted)``: ``name`` after the renamings, and the key a converter
    (fusing or splitting weights) would give it, or ``None`` when none applies.

    Converters are tried first and at most one applies, as transformers does when saving.
    """
    for converter in converters:
        converted, pattern = converter.rename_source_key(name)
        if pattern is not None:
            return name, converted
    renamed = name
    for renaming in renamings:
        renamed, _ = renaming.rename_source_key(renamed)
    return renamed, None


def load_converted(model: Any, state_dict: Mapping[str, Any]) -> tuple[set[str], list]:
    """Load checkpoint-keyed ``state_dict`` into ``model`` as ``from_pretrained`` does; re-tie weights.

    Returns ``(missing_keys, mismatched_keys)`` (each mismatch as ``(key, checkpoint_shape, model_shape)``).
    """
    t = api()
    device = next(model.parameters()).device
    config = t.LoadStateDictConfig(device_map={"": device}, weight_mapping=t.get_model_conversion_mapping(model))
    info, _ = t.convert_and_load_state_dict_in_model(model, dict(state_dict), config)
    model.tie_weights(missing_keys=info.missing_keys, recompute_mapping=False)
    return set(info.missing_keys), list(info.mismatched_keys)


def to_checkpoint_keys(model: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` (in-memory names) as ``save_pretrained`` would write it (checkpoint names and layout)."""
    return api().revert_weight_conversion(model, state_dict)
