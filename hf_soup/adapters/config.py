"""Read a PEFT ``adapter_config.json`` and refuse what hf_soup cannot merge exactly.

Only plain LoRA is merged: ``ΔW = scale · B @ A`` with ``scale = alpha / r``
(``alpha / sqrt(r)`` with rsLoRA), ``r`` and ``alpha`` per module from ``rank_pattern``
and ``alpha_pattern``. Every option that changes that formula, or the base weights the
adapter was trained against, is refused with an error naming the option.

>>> cfg = LoraAdapterConfig.from_dict({"peft_type": "LORA", "r": 8, "lora_alpha": 16}, "demo")
>>> cfg.scale("model.layers.0.self_attn.q_proj", 8)
2.0
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptWeightsError, UnsupportedAdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"

# init_lora_weights values that rewrite the *base* weights (the adapter is then relative
# to a residual model, not to the published base).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


# Options PEFT writes whose update is not a plain ``B @ A`` on the published base -> why.
_REFUSED = {
    "use_dora": "DoRA rescales each column by a learned magnitude; its ΔW is not B@A",
    "bias": "trained base biases are not merged; retrain with bias='none'",
    "lora_bias": "a bias on lora_B is not merged",
    "target_parameters": "LoRA on raw parameters (MoE experts) is not merged",
    "trainable_token_indices": "trainable-token deltas are not merged",
    "layer_replication": "the adapter changes the layer stack of the base",
    "alora_invocation_tokens": "activated LoRA applies only after its invocation tokens and cannot be merged",
    "use_qalora": "QA-LoRA pools inputs; its ΔW is not B@A",
    **dict.fromkeys(("use_bdlora", "arrow_config", "kasa_config", "monteclora_config"),
                    "this LoRA variant's update is not a plain B@A"),
    "loftq_config": "LoftQ adapters are relative to a quantised base",
}


def _refusals(data: dict[str, Any]) -> list[str]:
    """Every unsupported option set in ``data``, each as ``option=value (why)``."""
    problems = [f"{option}={data.get(option)!r} ({why})" for option, why in _REFUSED.items() if _is_set(data, option)]
    init = data.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        problems.append(f"init_lora_weights={init!r} (this initialisation rewrites the base weights; save the adapter "
                        "converted to plain LoRA (path_initial_model_for_weight_conversion) and use that)")
    return problems


def _is_set(data: dict[str, Any], option: str) -> bool:
    """``bias`` is set unless ``none``; every other option when truthy."""
    return (data.get("bias") or "none") != "none" if option == "bias" else bool(data.get(option))


def match_pattern(patterns: dict[str, Any], module: str) -> str | None:
    """The ``rank_pattern`` / ``alpha_pattern`` key that applies to ``module`` (PEFT's rule).

    A key applies when ``module`` ends with it at a dot boundary (keys are regexes).
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


@dataclass(frozen=True)
class LoraAdapterConfig:
    """The parts of a LoRA ``adapter_config.json`` that define the merge."""

    origin: str
    r: int
    alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    modules_to_save: tuple[str, ...] = ()
    base_model_name_or_path: str | None = None
    revision: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str) -> "LoraAdapterConfig":
        """Validate ``data``; raise :class:`UnsupportedAdapterError` naming each unsupported option."""
        peft_type = str(data.get("peft_type") or "").upper()
        if peft_type != "LORA":
            raise UnsupportedAdapterError(
                f"{origin}: peft_type={data.get('peft_type')!r}; only LoRA adapters (peft_type LORA) can be souped. "
                "Merge this adapter into its base with PEFT's merge_and_unload() and use the result as a full model"
            )
        problems = _refusals(data)
        if problems:
            raise UnsupportedAdapterError(
                f"{origin}: unsupported LoRA option(s): {'; '.join(problems)}. hf_soup merges plain LoRA only; "
                "merge this adapter with PEFT's merge_and_unload() and use the result as a full-model ingredient"
            )
        try:
            r = int(data["r"])
            alpha = float(data.get("lora_alpha", 8))
            rank_pattern = {str(k): int(v) for k, v in (data.get("rank_pattern") or {}).items()}
            alpha_pattern = {str(k): float(v) for k, v in (data.get("alpha_pattern") or {}).items()}
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptWeightsError(f"{origin}: {CONFIG_FILE} has no valid r / lora_alpha ({error}); re-save the adapter") from None
        modules = data.get("modules_to_save") or ()
        return cls(
            origin=origin, r=r, alpha=alpha, use_rslora=bool(data.get("use_rslora")),
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
            fan_in_fan_out=bool(data.get("fan_in_fan_out")),
            modules_to_save=tuple(modules) if not isinstance(modules, str) else (modules,),
            base_model_name_or_path=data.get("base_model_name_or_path") or None,
            revision=data.get("revision") or None, raw=dict(data),
        )

    @classmethod
    def read(cls, directory: Path) -> "LoraAdapterConfig":
        """Read ``directory/adapter_config.json``."""
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise CorruptWeightsError(f"{path}: not valid JSON ({error}); re-save the adapter") from None
        if not isinstance(data, dict):
            raise CorruptWeightsError(f"{path}: expected a JSON object; re-save the adapter")
        return cls.from_dict(data, str(directory))

    def rank(self, module: str) -> int:
        """The configured rank of ``module`` (``rank_pattern`` wins over ``r``)."""
        key = match_pattern(self.rank_pattern, module)
        return self.rank_pattern[key] if key is not None else self.r

    def scale(self, module: str, rank: int) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) for ``module`` of actual ``rank``."""
        key = match_pattern(self.alpha_pattern, module)
        alpha = self.alpha_pattern[key] if key is not None else self.alpha
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
