"""Which files of a checkpoint are weights, and which travel with the soup.

The same patterns restrict Hub downloads (``snapshot_download(allow_patterns=...)``)
and choose what is copied from the config ingredient into the output.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from ..errors import CorruptWeightsError, NoWeightsError
from .confine import safe_member_name

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Files that describe the model and its pre/post-processing; copied into the soup.
SIDECAR_PATTERNS = [
    "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json",
    "added_tokens.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken", "spiece.*",
    "preprocessor_config.json", "processor_config.json", "image_processor*.json",
    "feature_extractor*.json", "video_preprocessor*.json", "chat_template.*",
]
# What to fetch from the Hub for an ingredient.
WEIGHT_PATTERNS = ["*.safetensors", SAFETENSORS_INDEX]
LEGACY_WEIGHT_PATTERNS = ["pytorch_model*.bin", BIN_INDEX]
ADAPTER_PATTERNS = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]


def is_sidecar(name: str) -> bool:
    """Whether a file name is a config / tokenizer / processor file."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in SIDECAR_PATTERNS)


def sidecar_files(directory: Path) -> list[Path]:
    """The config, tokenizer and processor files directly in ``directory``, sorted."""
    return sorted(p for p in directory.iterdir() if p.is_file() and is_sidecar(p.name))


def _indexed_files(directory: Path, index_name: str) -> list[Path]:
    import json

    index_path = directory / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise CorruptWeightsError(f"{index_path}: not a valid weight index ({error}); re-save the checkpoint") from None
    if not isinstance(weight_map, dict):
        raise CorruptWeightsError(f"{index_path}: weight_map is not a mapping of tensor names to files; re-save the checkpoint")
    names = [safe_member_name(name, str(index_path)) for name in dict.fromkeys(weight_map.values())]
    files = [directory / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CorruptWeightsError(
            f"{index_path}: names shard(s) that are not there: {', '.join(missing)}; the checkpoint is incomplete"
        )
    return files


def weight_files(directory: Path) -> tuple[str, list[Path]]:
    """Return ``(format, files)`` of the model weights in ``directory``.

    Safetensors win over ``.bin`` when both exist; an index file wins over globbing.
    """
    if (directory / SAFETENSORS_INDEX).is_file():
        return "safetensors", _indexed_files(directory, SAFETENSORS_INDEX)
    if (directory / "model.safetensors").is_file():
        return "safetensors", [directory / "model.safetensors"]
    tensors = sorted(p for p in directory.glob("*.safetensors") if not p.name.startswith("adapter_model"))
    if tensors:
        return "safetensors", tensors
    if (directory / BIN_INDEX).is_file():
        return "bin", _indexed_files(directory, BIN_INDEX)
    if (directory / "pytorch_model.bin").is_file():
        return "bin", [directory / "pytorch_model.bin"]
    raise NoWeightsError(
        f"{directory}: no weights found (looked for model.safetensors, sharded *.safetensors with "
        f"{SAFETENSORS_INDEX}, or pytorch_model.bin); point at a save_pretrained or checkpoint folder"
    )
