"""``evaluation:`` — which data a soup is scored on, and how.

```yaml
evaluation:
  dataset: glue            # Hub dataset ID, a save_to_disk folder, or csv/json/parquet file(s)
  config: mrpc             # Hub dataset configuration (``name`` in ``datasets.load_dataset``)
  split: validation
  text_column: sentence1
  text_pair_column: sentence2
  label_column: label
  max_samples: 1000
  batch_size: 32
  metric: accuracy         # accuracy | loss | perplexity
```

From Python the same keys are accepted, and ``dataset`` may also be an in-memory
``datasets.Dataset`` / ``DatasetDict``, ``metric`` a callable
``f(logits, labels) -> float`` (``logits``: float32 array ``(M, C)``, ``labels``: int64
array ``(M,)``; ``M`` = examples, or scored tokens for causal LMs) and ``collate_fn`` a
function turning a list of dataset rows into the model's keyword arguments plus
``labels``::

    >>> EvaluationSpec(dataset="./val.parquet", text_column="text").higher_is_better
    True
    >>> EvaluationSpec(dataset="./val.parquet", metric="loss").higher_is_better
    False
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_METRICS = ("accuracy", "loss", "perplexity")
_LOWER_IS_BETTER = {"loss", "perplexity"}
DATA_FILE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class EvaluationSpec(BaseModel):
    """Validated description of an evaluation; unknown keys are errors.

    * ``dataset`` — Hub dataset ID, local ``save_to_disk`` folder (``Dataset`` or
      ``DatasetDict``), a data file (``.csv``, ``.tsv``, ``.json``, ``.jsonl``,
      ``.parquet``) or a list of them, or (Python) a ``datasets.Dataset``/``DatasetDict``.
    * ``config`` / ``revision`` — Hub dataset configuration and revision.
    * ``split`` — split of a Hub dataset or ``DatasetDict`` (default ``validation``;
      ignored for a single ``Dataset`` or data files).
    * ``text_column`` / ``text_pair_column`` / ``image_column`` / ``label_column`` —
      column names; the defaults ``text`` / ``image`` / ``label`` are used when not given.
    * ``max_samples`` — evaluate on the first ``max_samples`` rows only.
    * ``batch_size`` — examples per forward pass (per process).
    * ``max_length`` — tokenizer truncation length (default: the tokenizer's limit, at most 512).
    * ``metric`` — ``accuracy``, ``loss`` (mean cross-entropy), ``perplexity`` (causal LMs)
      or a callable; ``higher_is_better`` is inferred (``loss``/``perplexity``: lower is
      better; a callable: higher unless told).
    * ``processor_from`` — a local folder whose tokenizer / image processor and config to
      use (default: the first ingredient that has a folder).
    * ``dtype`` — the evaluation model's dtype (``float32`` default).
    * ``logits_dtype`` — dtype of cached logits (RADIN, ensemble): ``float32`` or ``float16``.
    * ``cache_dir`` — where large logit caches go (default: a temporary folder).
    * ``device_memory`` — device memory for forming candidate soups, greedy's running sum
      and resident ingredient tensors (in that order): bytes, or a size such as ``"8GiB"`` /
      ``"500MB"`` (default: half the free memory). What does not fit is streamed through
      pinned host buffers, with the same result; ``0`` is refused with an error naming
      the largest tensor, which always needs room. A learned soup's training takes its
      share first (:mod:`hf_soup.methods.learned.residency`).
    * ``trust_remote_code`` — allow the ingredients' own config / model / processor code.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    dataset: Any
    config: str | None = None
    revision: str | None = None
    split: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    max_samples: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=32, gt=0)
    max_length: int | None = Field(default=None, gt=0)
    metric: Union[Literal["accuracy", "loss", "perplexity"], Callable[..., float]] = "accuracy"
    higher_is_better: bool | None = None
    collate_fn: Callable[..., Any] | None = None
    processor_from: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    logits_dtype: Literal["float32", "float16"] = "float32"
    cache_dir: str | None = None
    device_memory: int | None = Field(default=None, ge=0)
    trust_remote_code: bool = False

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("give a Hub dataset ID, a folder or a data file")
            return value.strip()
        if isinstance(value, (list, tuple)):
            if not value or not all(isinstance(v, str) for v in value):
                raise ValueError("a list must hold data file paths (csv, json, jsonl, parquet)")
            return [str(v) for v in value]
        if hasattr(value, "__fspath__"):
            return str(value)
        if type(value).__name__ in ("Dataset", "DatasetDict") and type(value).__module__.startswith("datasets"):
            return value
        raise ValueError(
            f"expected a Hub dataset ID, a path, a list of data files or a datasets.Dataset, got {type(value).__name__}"
        )

    @field_validator("device_memory", mode="before")
    @classmethod
    def _device_memory(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in BUILTIN_METRICS:
            raise ValueError(f"unknown metric {value!r}; use one of {', '.join(BUILTIN_METRICS)} or a Python callable")
        return value

    @model_validator(mode="after")
    def _direction(self) -> "EvaluationSpec":
        if self.higher_is_better is None:
            self.higher_is_better = not (isinstance(self.metric, str) and self.metric in _LOWER_IS_BETTER)
        return self

    @property
    def metric_name(self) -> str:
        """The metric's name for reports (a callable's ``__name__``)."""
        if isinstance(self.metric, str):
            return self.metric
        return getattr(self.metric, "__name__", "custom")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for ``soup_report.json``.

        ``source`` is ``hub`` (``dataset`` is a Hub dataset ID), ``local`` (a path) or
        ``in-memory Dataset`` (then ``dataset`` is left out).
        """
        dataset = self.dataset
        if not isinstance(dataset, (str, list)):
            source, dataset = f"in-memory {type(dataset).__name__}", None
        elif isinstance(dataset, list) or Path(dataset).suffix.lower() in DATA_FILE_SUFFIXES or Path(dataset).expanduser().exists():
            source = "local"
        else:
            source = "hub"
        out = {
            "dataset": dataset,
            "source": source,
            "config": self.config,
            "revision": self.revision,
            "split": self.split,
            "metric": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "max_samples": self.max_samples,
            "batch_size": self.batch_size,
        }
        for key in ("text_column", "text_pair_column", "image_column", "label_column"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return {k: v for k, v in out.items() if v is not None}


    def as_recipe(self) -> dict[str, Any]:
        """The ``evaluation:`` mapping of a recipe that reproduces this spec (only keys off their default).

        Unlike :meth:`describe`, every key is one the recipe accepts. What YAML cannot hold
        (an in-memory dataset, a callable metric or collate function) becomes a ``<...>``
        placeholder saying what to put there.

        >>> EvaluationSpec(dataset="./val.csv", metric="loss").as_recipe()
        {'dataset': './val.csv', 'metric': 'loss'}
        """
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name == "higher_is_better":
                inferred = not (isinstance(self.metric, str) and self.metric in _LOWER_IS_BETTER)
                if value != inferred:
                    out[name] = value
            elif name == "dataset" and not isinstance(value, (str, list)):
                out[name] = f"<in-memory {type(value).__name__}: save it with save_to_disk and give the folder>"
            elif callable(value):
                label = getattr(value, "__name__", "function")
                out[name] = f"<Python callable {label}: pass it from Python>"
            elif value is not None and value != field.default:
                out[name] = value
        return out


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``"8GiB"``, ``"500 MB"`` or ``"1024"``.

    >>> parse_size("1.5GiB")
    1610612736
    """
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size; give bytes or a number with a unit (B, KB, MB, GB, KiB, MiB, GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_evaluation(value: Any) -> EvaluationSpec | None:
    """Accept an :class:`EvaluationSpec`, a mapping, or a bare dataset (ID, path or object).

    >>> parse_evaluation("./val.csv").dataset
    './val.csv'
    """
    if value is None or isinstance(value, EvaluationSpec):
        return value
    if isinstance(value, dict):
        return EvaluationSpec.model_validate(value)
    return EvaluationSpec(dataset=value)
