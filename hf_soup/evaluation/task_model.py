"""Build the task model once from a config, and load candidate weights into it.

Checkpoint keys on disk may differ from ``model.state_dict()`` keys in transformers 5
(a ViT checkpoint stores ``vit.encoder.layer.0.attention.attention.query.weight``, the
model calls it ``vit.layers.0.attention.q_proj.weight``). Soups are computed on
checkpoint keys, so :func:`load_checkpoint_weights` loads them through transformers'
own conversion (``get_model_conversion_mapping`` + ``convert_and_load_state_dict_in_model``,
through :mod:`hf_soup.compat.transformers_keys`),
exactly as ``from_pretrained`` does — never through ``load_state_dict``.

>>> model = build_task_model(config)                            # doctest: +SKIP
>>> load_checkpoint_weights(model, soup_state_dict)             # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from ..errors import EvaluationError

TASKS = {
    "ForSequenceClassification": "sequence-classification",
    "ForImageClassification": "image-classification",
    "ForCausalLM": "causal-lm",
}


def task_of(architecture: str) -> str | None:
    """The task family of an architecture name (``BertForSequenceClassification`` -> ``sequence-classification``)."""
    for suffix, task in TASKS.items():
        if architecture.endswith(suffix):
            return task
    if architecture.endswith("LMHeadModel") and architecture in _causal_lm_classes():  # GPT2LMHeadModel, ...
        return "causal-lm"
    return None


def _causal_lm_classes() -> set[str]:
    """The classes transformers' ``AutoModelForCausalLM`` builds (some predate the ``*ForCausalLM`` naming)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - a transformers without the mapping
        return set()
    return {name for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
            for name in ([value] if isinstance(value, str) else value)}


def architecture_of(config: Any) -> tuple[str, str]:
    """``(architecture, task)`` from ``config.architectures``; raise ``EvaluationError`` if unusable."""
    architectures = list(getattr(config, "architectures", None) or [])
    for architecture in architectures:
        task = task_of(architecture)
        if task:
            return architecture, task
    raise EvaluationError(
        f"evaluation: the ingredients' config.architectures is {architectures or 'missing'}; hf_soup evaluates "
        "*ForSequenceClassification, *ForImageClassification and causal LM (*ForCausalLM, GPT2LMHeadModel...) models. Save the ingredients with "
        "save_pretrained from a task model, or give a collate_fn and a callable metric for another head"
    )


_AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
}


def build_task_model(config: Any, *, dtype: str = "float32", device: Any = "cpu", trust_remote_code: bool = False) -> Any:
    """Instantiate ``config.architectures``' task class from ``config`` (random weights), in eval mode.

    A class that transformers does not ship (custom code) is built through the task's
    ``AutoModelFor...`` only with ``trust_remote_code=True``.
    """
    import torch
    import transformers

    architecture, task = architecture_of(config)
    cls = getattr(transformers, architecture, None)
    if cls is not None:
        model = cls._from_config(config, dtype=getattr(torch, dtype))
    elif trust_remote_code:
        auto = getattr(transformers, _AUTO_CLASSES[task])
        model = auto.from_config(config, trust_remote_code=True, dtype=getattr(torch, dtype))
    else:
        raise EvaluationError(
            f"evaluation: transformers {transformers.__version__} has no class {architecture!r}; upgrade transformers, "
            "or set evaluation.trust_remote_code: true if the ingredients ship their own modeling code"
        )
    return model.to(device).eval()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_checkpoint_weights(model: Any, state_dict: Mapping[str, Any]) -> None:
    """Load a checkpoint-keyed ``state_dict`` into ``model`` through transformers' key conversion.

    Tensors are cast to the model's dtype and moved to its device; when they already
    match, the model's parameters share memory with ``state_dict``'s tensors (no copy):
    clone the tensors first if you will train the model in place. Tied weights are
    re-tied afterwards. Raises :class:`EvaluationError` when a model weight is left
    unloaded or a shape does not match — a candidate is never scored with stale or
    random weights.
    """
    from ..compat.transformers_keys import load_converted

    with _quiet_transformers():
        missing_keys, mismatched = load_converted(model, state_dict)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(k for k in missing_keys if k not in tied and k not in buffers)
    if missing or mismatched:
        problems = [f"missing {k}" for k in missing[:5]] + [
            f"{k}: checkpoint shape {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:5]
        ]
        raise EvaluationError(
            f"evaluation: the candidate weights do not fit the {type(model).__name__} built from the config "
            f"({len(missing)} missing, {len(mismatched)} mismatched: {'; '.join(problems)}). "
            "Check that every ingredient is a fine-tune of the same architecture and that on_missing is not 'skip'"
        )
    model.eval()
