"""Load the evaluation split, check it against the model, and turn rows into batches.

>>> split = load_split(EvaluationSpec(dataset="./val.parquet"))            # doctest: +SKIP
>>> columns = check_split(split, spec, "sequence-classification", config)  # doctest: +SKIP
>>> collate = build_collate(spec, columns, "sequence-classification", "./run-1")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import EvaluationError
from .spec import DATA_FILE_SUFFIXES, EvaluationSpec

logger = logging.getLogger("hf_soup")

DEFAULT_SPLIT = "validation"
_MAX_TOKENIZER_LENGTH = 512


def _pick_split(dataset_dict: Any, spec: EvaluationSpec, where: str) -> Any:
    split = spec.split or DEFAULT_SPLIT
    if split not in dataset_dict:
        raise EvaluationError(
            f"evaluation.split: {where} has no split {split!r} (it has {', '.join(dataset_dict) or 'none'}); "
            "set evaluation.split to one of them"
        )
    return dataset_dict[split]


def load_split(spec: EvaluationSpec, token: str | None = None, progress: bool = True) -> Any:
    """Load the split ``spec`` describes as a ``datasets.Dataset`` (first ``max_samples`` rows).

    ``token`` is used for gated or private Hub datasets; ``progress=False`` silences
    ``datasets``' own progress bars (``hf-soup merge --quiet``, or stderr not a terminal).
    """
    import datasets

    if progress or not datasets.is_progress_bar_enabled():
        return _load_split(spec, token)
    datasets.disable_progress_bars()
    try:
        return _load_split(spec, token)
    finally:
        datasets.enable_progress_bars()


def _load_split(spec: EvaluationSpec, token: str | None) -> Any:
    import datasets

    source = spec.dataset
    if isinstance(source, datasets.DatasetDict):
        split = _pick_split(source, spec, "the DatasetDict given")
    elif isinstance(source, datasets.Dataset):
        split = _single_split(source, spec)
    elif isinstance(source, list) or Path(str(source)).suffix.lower() in DATA_FILE_SUFFIXES:
        split = _single_split(_load_files([source] if isinstance(source, str) else source), spec)
    elif Path(source).expanduser().is_dir():
        split = _load_folder(Path(source).expanduser(), spec)
    elif Path(source).expanduser().exists():
        raise EvaluationError(
            f"evaluation.dataset: {source} is a file hf_soup cannot read; use {', '.join(sorted(DATA_FILE_SUFFIXES))}"
        )
    else:
        split = _load_hub(source, spec, token)
    if spec.max_samples is not None and len(split) > spec.max_samples:
        split = split.select(range(spec.max_samples))
    if len(split) == 0:
        raise EvaluationError(
            f"evaluation.dataset: the evaluation split of {_name(spec)} is empty; choose another split or dataset"
        )
    return split


def is_single_split(spec: EvaluationSpec) -> bool:
    """Whether ``spec.dataset`` has one split only (a ``Dataset``, data files, a ``Dataset`` save_to_disk folder)."""
    source = spec.dataset
    if isinstance(source, list) or (isinstance(source, str) and Path(source).suffix.lower() in DATA_FILE_SUFFIXES):
        return True
    if isinstance(source, str):
        folder = Path(source).expanduser()
        return folder.is_dir() and not (folder / "dataset_dict.json").is_file() and (
            (folder / "state.json").is_file() or (folder / "dataset_info.json").is_file())
    return type(source).__name__ == "Dataset"


def _single_split(dataset: Any, spec: EvaluationSpec) -> Any:
    """A source with one split: a ``split`` the user asked for cannot apply, so say it is ignored."""
    if spec.split is not None:
        logger.warning("evaluation.split: %r is ignored: %s is a single split (all its rows are used); give a "
                       "DatasetDict folder or a Hub dataset to choose a split", spec.split, _name(spec))
    return dataset


def _name(spec: EvaluationSpec) -> str:
    return spec.dataset if isinstance(spec.dataset, str) else f"the {type(spec.dataset).__name__} given"


def _load_files(files: list[str]) -> Any:
    import datasets

    suffixes = {DATA_FILE_SUFFIXES.get(Path(f).suffix.lower()) for f in files}
    if None in suffixes or len(suffixes) != 1:
        raise EvaluationError(
            f"evaluation.dataset: {files} must be files of one kind among {', '.join(sorted(DATA_FILE_SUFFIXES))}"
        )
    for file in files:
        if not Path(file).expanduser().is_file():
            raise EvaluationError(f"evaluation.dataset: {file} does not exist; check the path")
    builder = suffixes.pop()
    kwargs = {"delimiter": "\t"} if builder == "csv" and all(f.lower().endswith(".tsv") for f in files) else {}
    try:
        return datasets.load_dataset(builder, data_files=[str(Path(f).expanduser()) for f in files], split="train", **kwargs)
    except Exception as error:  # datasets raises ValueError (no rows), ArrowInvalid, DatasetGenerationError...
        if "corresponds to no data" in str(error):
            raise EvaluationError(f"evaluation.dataset: {', '.join(files)} holds no rows; give a file with data") from None
        raise EvaluationError(
            f"evaluation.dataset: cannot read {', '.join(files)} as {builder} ({_first_line(error)}); check the file's format"
        ) from None


def _first_line(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__  # DatasetGenerationError hides the parser's message in its cause
    text = str(cause if cause is not None and type(error).__name__ == "DatasetGenerationError" else error)
    return (text.strip().splitlines() or [type(error).__name__])[0][:200]


def _load_folder(folder: Path, spec: EvaluationSpec) -> Any:
    import datasets

    if (folder / "dataset_dict.json").is_file():
        return _pick_split(datasets.load_from_disk(str(folder)), spec, str(folder))
    if (folder / "state.json").is_file() or (folder / "dataset_info.json").is_file():
        return _single_split(datasets.load_from_disk(str(folder)), spec)
    try:
        return _pick_split(datasets.load_dataset(str(folder)), spec, str(folder))
    except EvaluationError:
        raise
    except Exception as error:  # datasets raises many kinds here
        raise EvaluationError(
            f"evaluation.dataset: cannot read the folder {folder} as a dataset ({error}); give a save_to_disk "
            "folder or data files"
        ) from None


def _load_hub(name: str, spec: EvaluationSpec, token: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, spec.config, split=spec.split or DEFAULT_SPLIT, revision=spec.revision,
                                     token=token)
    except Exception as error:  # datasets raises many kinds (not found, offline, bad config or split)
        raise EvaluationError(
            f"evaluation.dataset: cannot load {name!r} (config {spec.config!r}, split {spec.split or DEFAULT_SPLIT!r}) "
            f"from the Hub or disk: {error}. Check the dataset ID, config and split, or give a local path"
        ) from None


@dataclass(frozen=True)
class Columns:
    """The columns an evaluation reads."""

    text: str | None = None
    text_pair: str | None = None
    image: str | None = None
    label: str | None = None


def _require(split: Any, column: str, field: str, given: bool) -> None:
    if column not in split.column_names:
        hint = f"set evaluation.{field} to one of them" if not given else "check the spelling"
        raise EvaluationError(
            f"evaluation.{field}: column {column!r} is not in the dataset (columns: {', '.join(split.column_names)}); {hint}"
        )


def check_split(split: Any, spec: EvaluationSpec, task: str | None, config: Any = None) -> Columns:
    """Check the columns and labels of ``split`` for ``task``; return the columns to read.

    Classification labels must be integers in ``[0, num_labels)`` (or names found in
    ``config.label2id``). With a ``collate_fn`` only the label column is checked, if named.
    """
    if spec.collate_fn is not None:
        if spec.label_column:
            _require(split, spec.label_column, "label_column", True)
        return Columns(spec.text_column, spec.text_pair_column, spec.image_column, spec.label_column)
    if task == "image-classification":
        image = spec.image_column or "image"
        _require(split, image, "image_column", spec.image_column is not None)
        columns = Columns(image=image, label=spec.label_column or "label")
    else:
        text = spec.text_column or "text"
        _require(split, text, "text_column", spec.text_column is not None)
        if spec.text_pair_column:
            _require(split, spec.text_pair_column, "text_pair_column", True)
        label = None if task == "causal-lm" else spec.label_column or "label"
        columns = Columns(text=text, text_pair=spec.text_pair_column, label=label)
    if columns.label is not None:
        _require(split, columns.label, "label_column", spec.label_column is not None)
        label_ids(split[columns.label], config)
    return columns


def label_ids(values: list[Any], config: Any) -> list[int]:
    """Labels as integer class ids; raise ``EvaluationError`` when one is outside the model's range."""
    num_labels = getattr(config, "num_labels", None)
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    out = []
    for row, value in enumerate(values):
        if isinstance(value, str):
            if value not in label2id:
                raise EvaluationError(
                    f"evaluation.label_column: row {row} has label {value!r}, which is not among the model's labels "
                    f"({', '.join(sorted(label2id)) or 'none in config.label2id'}); map the labels to class ids"
                )
            value = label2id[value]
        integral = isinstance(value, int) or (hasattr(value, "is_integer") and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise EvaluationError(
                f"evaluation.label_column: row {row} has label {value!r}; labels must be integer class ids"
            )
        value = int(value)
        if num_labels is not None and not 0 <= value < num_labels:
            raise EvaluationError(
                f"evaluation.label_column: row {row} has label {value}, outside the model's {num_labels} labels "
                f"[0, {num_labels - 1}]; these ingredients were not trained for this dataset's labels"
            )
        out.append(value)
    return out


def _processor_error(kind: str, directory: Any, error: Exception) -> EvaluationError:
    return EvaluationError(
        f"evaluation: cannot load the {kind} from {directory} ({error}); save it next to the first ingredient, "
        "set evaluation.processor_from to a folder that has it, or give a collate_fn"
    )


def _pil_processor_class(directory: Any) -> Any:
    """The PIL-backend class (``ViTImageProcessorPil``) of the processor saved in ``directory``, or ``None``."""
    import transformers

    try:
        saved = json.loads((Path(directory) / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        return None
    name = str(saved.get("image_processor_type") or "").removesuffix("Fast").removesuffix("Pil")
    return getattr(transformers, f"{name}Pil", None) if name else None


def load_image_processor(directory: Any, trust_remote_code: bool = False) -> Any:
    """The image processor saved in ``directory``; without torchvision, its PIL-backend class.

    transformers 5 image processors default to a torchvision backend; most also ship a PIL
    one (``ViTImageProcessorPil``) that needs only Pillow. One with no PIL class raises an
    :class:`EvaluationError` naming the extra to install.
    """
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        pil = _pil_processor_class(directory)
        if pil is not None:
            try:
                return pil.from_pretrained(str(directory))
            except Exception as error:  # transformers raises OSError/ValueError/KeyError here
                raise _processor_error("image processor", directory, error) from None
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except ImportError as error:
        if "torchvision" not in str(error).lower():
            raise
        raise EvaluationError(
            f"evaluation: the image processor of {directory} needs torchvision, which is not installed; run "
            "pip install 'hf-soup[vision]' (or pip install torchvision matching your torch), or give a collate_fn"
        ) from None
    except Exception as error:  # transformers raises OSError/ValueError/KeyError here
        raise _processor_error("image processor", directory, error) from None


def build_collate(
    spec: EvaluationSpec, columns: Columns, task: str | None, processor_dir: Any, config: Any = None
) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A collate function: rows -> model keyword arguments plus ``labels``.

    Text is tokenized with the ingredient's ``AutoTokenizer`` (dynamic padding,
    truncation), images go through its ``AutoImageProcessor``; causal-LM labels are the
    input ids with padding masked as ``-100``, and causal LMs are padded on the right
    (whatever the tokenizer's ``padding_side``), so each row's tokens are scored exactly
    as in a batch of one: loss and perplexity are token-weighted over the split.
    """
    if spec.collate_fn is not None:
        return spec.collate_fn
    if task == "image-classification":
        return _ImageCollate(load_image_processor(processor_dir, spec.trust_remote_code), columns, config)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(processor_dir), trust_remote_code=spec.trust_remote_code)
    except Exception as error:  # transformers raises OSError/ValueError/KeyError here
        raise _processor_error("tokenizer", processor_dir, error) from None
    if len(tokenizer) <= 1 or not tokenizer("a b")["input_ids"]:  # transformers 5 builds an empty one from no files
        raise EvaluationError(
            f"evaluation: {processor_dir} has no tokenizer files (tokenizer.json, vocab / merges files...), so text "
            "cannot be tokenized; save the tokenizer next to the first ingredient (tokenizer.save_pretrained), set "
            "evaluation.processor_from to a folder that has one, or give a collate_fn"
        )
    if task == "causal-lm":  # left padding would shift positions and score a first token after padding
        tokenizer.padding_side = "right"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif tokenizer.pad_token is None and spec.batch_size > 1:
        raise EvaluationError(
            f"evaluation: the tokenizer of {processor_dir} has neither a pad nor an eos token to pad batches; "
            "give a collate_fn or set batch_size: 1"
        )
    max_length = spec.max_length or min(getattr(tokenizer, "model_max_length", _MAX_TOKENIZER_LENGTH) or _MAX_TOKENIZER_LENGTH,
                                        _MAX_TOKENIZER_LENGTH)
    return _TextCollate(tokenizer, columns, task, max_length, config)


class _TextCollate:
    def __init__(self, tokenizer: Any, columns: Columns, task: str | None, max_length: int, config: Any):
        self.tokenizer, self.columns, self.task, self.max_length, self.config = tokenizer, columns, task, max_length, config

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        texts = [str(row[self.columns.text]) for row in rows]
        pairs = [str(row[self.columns.text_pair]) for row in rows] if self.columns.text_pair else None
        batch = dict(self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt"))
        if self.task == "causal-lm":
            labels = batch["input_ids"].clone()
            if "attention_mask" in batch:
                labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
        elif self.columns.label:
            batch["labels"] = torch.tensor(label_ids([row[self.columns.label] for row in rows], self.config))
        return batch


class _ImageCollate:
    def __init__(self, processor: Any, columns: Columns, config: Any):
        self.processor, self.columns, self.config = processor, columns, config

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        images = []
        for row in rows:
            image = row[self.columns.image]
            if hasattr(image, "convert"):
                image = image.convert("RGB")
            elif not hasattr(image, "shape"):
                image = np.asarray(image)
            images.append(image)
        batch = dict(self.processor(images=images, return_tensors="pt"))
        batch["labels"] = torch.tensor(label_ids([row[self.columns.label] for row in rows], self.config))
        return batch
