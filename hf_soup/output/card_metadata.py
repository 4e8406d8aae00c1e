"""The model card's YAML metadata, derived from ``soup_report.json``.

``base_model`` lists the Hub ingredients in the soup with ``base_model_relation: merge``, so
the Hub links the soup to its ingredients; ``license``, ``pipeline_tag`` and ``library_name``
are kept only when every ingredient that states one agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

BASE_TAGS = ["hf-soup", "model-soup", "merge"]
# Architecture suffix -> pipeline tag, when the ingredients' Hub metadata does not say.
_PIPELINES = [
    ("ForSequenceClassification", "text-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForAudioClassification", "audio-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),  # GPT2LMHeadModel and other causal LMs named before *ForCausalLM
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSeq2SeqLM", "text2text-generation"),
    ("ForSpeechSeq2Seq", "automatic-speech-recognition"),
    ("ForCTC", "automatic-speech-recognition"),
    ("ForObjectDetection", "object-detection"),
]


def kept_ingredients(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Report rows of the ingredients that made it into the soup."""
    return [row for row in report.get("ingredients", []) if row.get("kept", True)]


def _ingredient_field(row: dict[str, Any], name: str) -> Any:
    return row.get(name) if row.get(name) is not None else (row.get("card_data") or {}).get(name)


def _agreed(rows: list[dict[str, Any]], name: str) -> Any:
    """The value every row states for ``name`` (rows that state nothing do not count), else ``None``."""
    values = [v for v in (_ingredient_field(row, name) for row in rows) if v is not None]
    if not values or len(rows) != len(values):
        return None
    return values[0] if all(v == values[0] for v in values) else None


def pipeline_from_architectures(architectures: list[str] | None) -> str | None:
    """A pipeline tag guessed from ``config.architectures`` (e.g. ``...ForSequenceClassification``)."""
    for architecture in architectures or []:
        for suffix, tag in _PIPELINES:
            if architecture.endswith(suffix):
                return tag
    return None


def _dataset_id(evaluation: dict[str, Any]) -> str | None:
    dataset = evaluation.get("dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("path") or dataset.get("name")
    return str(dataset) if dataset else None


def eval_results(report: dict[str, Any], pipeline_tag: str | None) -> list[dict[str, Any]] | None:
    """The soup's score as ``huggingface_hub.EvalResult`` fields (a list of one), when an evaluation ran."""
    evaluation = report.get("evaluation") or {}
    score = report.get("score")
    if not isinstance(evaluation, dict) or score is None:
        return None
    dataset = _dataset_id(evaluation) or "custom"
    raw = evaluation.get("dataset")
    split = evaluation.get("split") or (raw.get("split") if isinstance(raw, dict) else None)
    config = raw.get("name") if isinstance(raw, dict) and raw.get("path") else None
    metric = str(evaluation.get("metric") or "accuracy")
    return [dict(
        task_type=str(evaluation.get("task") or pipeline_tag or "other"),
        dataset_type=dataset, dataset_name=dataset, dataset_split=split, dataset_config=config,
        metric_type=metric, metric_name=metric, metric_value=float(score),
    )]


def model_index(model_name: str | None, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``model-index`` entry the Hub reads for ``results`` (one task and dataset: the soup's evaluation)."""
    first = results[0]
    entry = {
        "task": {"type": first["task_type"]},
        "dataset": {"name": first["dataset_name"], "type": first["dataset_type"],
                    "config": first.get("dataset_config"), "split": first.get("dataset_split")},
        "metrics": [{"type": r["metric_type"], "value": r["metric_value"], "name": r.get("metric_name")}
                    for r in results],
    }
    entry["dataset"] = {k: v for k, v in entry["dataset"].items() if v is not None}
    entry["metrics"] = [{k: v for k, v in m.items() if v is not None} for m in entry["metrics"]]
    return [{"name": model_name, "results": [entry]} if model_name is not None else {"results": [entry]}]


def adapter_card_metadata(report: dict[str, Any]) -> dict[str, Any] | None:
    """The fields a soup of PEFT adapters decides (``None`` when no adapter is involved)."""
    if not report.get("adapters"):
        return None
    from ..adapters.card import card_metadata

    return card_metadata(report)


def card_fields(report: dict[str, Any], model_name: str) -> dict[str, Any]:
    """The card metadata of a soup report: ``huggingface_hub.ModelCardData``'s arguments, in its field order."""
    rows = kept_ingredients(report)
    base_models = list(dict.fromkeys(row["repo_id"] for row in rows if row.get("repo_id")))
    model = report.get("model") or {}
    pipeline_tag = _agreed(rows, "pipeline_tag") or pipeline_from_architectures(model.get("architectures"))
    library_name = _agreed(rows, "library_name") or ("transformers" if model.get("model_type") else None)
    method = report.get("method")
    tags = BASE_TAGS + [t for t in (method,) if t and t not in BASE_TAGS]  # the method chosen, not its plan's writer
    results = eval_results(report, pipeline_tag)
    dataset = _dataset_id(report.get("evaluation") or {}) if results else None
    extra: dict[str, Any] = {}
    if base_models:
        extra["base_model_relation"] = "merge"
    adapter_fields = adapter_card_metadata(report)
    if adapter_fields:
        base_models = adapter_fields["base_model"] or []
        library_name = adapter_fields.get("library_name", library_name)
        tags = tags + adapter_fields["tags"]
        relation = adapter_fields.get("base_model_relation") or ("adapter" if library_name == "peft" else None)
        extra = {"base_model_relation": relation} if relation and base_models else {}
    return {
        "base_model": base_models or None,
        "datasets": [dataset] if dataset and dataset != "custom" else None,
        "eval_results": results,
        "library_name": library_name,
        "license": _agreed(rows, "license"),
        "model_name": model_name if results else None,
        "pipeline_tag": pipeline_tag,
        "tags": list(dict.fromkeys(tags)),
        **extra,
    }


def front_matter(fields: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML mapping, as ``ModelCardData.to_dict`` writes it: no ``None``, results as ``model-index``."""
    data = {k: v for k, v in fields.items() if k not in ("eval_results", "model_name") and v is not None}
    if fields.get("eval_results"):
        data["model-index"] = model_index(fields.get("model_name"), fields["eval_results"])
    return data


def model_card_data(fields: dict[str, Any]) -> ModelCardData:
    """:func:`card_fields` as a ``huggingface_hub.ModelCardData``."""
    from huggingface_hub import EvalResult, ModelCardData

    fields = dict(fields)
    results = fields.pop("eval_results")
    return ModelCardData(eval_results=[EvalResult(**r) for r in results] if results else None, **fields)
