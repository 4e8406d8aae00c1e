"""Validate a parsed safetensors header before any tensor is read.

The header is untrusted JSON: it may be a list, nest a thousand levels deep, lack
``data_offsets``, give a negative shape, or let two tensors share bytes (safetensors itself
refuses overlapping, out-of-order or gapped offsets). Every such shape is a
:class:`~hf_soup.errors.CorruptWeightsError` that names the file and the tensor.

>>> check_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, "m.safetensors", 8)
{'w': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}}
"""

from __future__ import annotations

from math import prod
from typing import Any

from ..errors import CorruptWeightsError
from . import dtypes

_FIX = "re-download or re-save the file"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: str, key: str, value: Any) -> tuple[int, int]:
    """The ``(begin, end)`` of one tensor entry, after checking its fields."""
    def bad(what: str) -> CorruptWeightsError:
        return CorruptWeightsError(f"{path}: corrupt safetensors header: tensor {key!r} {what}; {_FIX}")

    if not isinstance(value, dict):
        raise bad(f"is described by a {type(value).__name__}, not a mapping")
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in value]
    if missing:
        raise bad(f"lacks {', '.join(missing)}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in dtypes.STORAGE:
        raise bad(f"has unsupported dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or not all(_int(d) for d in shape):
        raise bad("has a shape that is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(o) for o in offsets):
        raise bad("has data_offsets that are not two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise bad(f"has data_offsets out of order ({begin} > {end})")
    if end - begin != prod(shape) * dtypes.STORAGE[dtype].itemsize:
        raise bad(f"has inconsistent offsets: {end - begin} bytes for shape {shape} of {dtype}")
    return begin, end


def check_header(header: Any, path: str, data_size: int) -> dict:
    """Return ``header`` when every entry is well formed and the tensors tile the data exactly.

    ``data_size`` is the number of bytes after the header; an entry past it means a
    truncated file.
    """
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path}: corrupt safetensors header: a {type(header).__name__}, not a mapping; {_FIX}")
    metadata = header.get("__metadata__")
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        raise CorruptWeightsError(f"{path}: corrupt safetensors header: __metadata__ is not a mapping of strings; {_FIX}")
    spans = sorted((*_entry(path, key, value), key) for key, value in header.items() if key != "__metadata__")
    end = spans[-1][1] if spans else 0
    if end > data_size:
        raise CorruptWeightsError(
            f"{path}: truncated: the header promises {end} bytes of data, the file has {data_size}; "
            "the download or save was interrupted, fetch the file again"
        )
    position, previous = 0, None
    for begin, stop, key in spans:
        if begin < position:
            raise CorruptWeightsError(f"{path}: corrupt safetensors header: tensors {previous!r} and {key!r} overlap "
                                      f"(bytes {begin}..{position}); {_FIX}")
        if begin > position:
            raise CorruptWeightsError(f"{path}: corrupt safetensors header: {begin - position} bytes before tensor "
                                      f"{key!r} belong to no tensor (safetensors refuses such gaps); {_FIX}")
        position, previous = stop, key
    return header
