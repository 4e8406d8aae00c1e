"""Read tensors straight from safetensors files with ``os.preadv``.

Only the JSON header is parsed; tensor bytes are read on demand, in the requested
element range, into caller-owned buffers. Nothing is memory-mapped, so reading a model
does not inflate the process's resident memory.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import CorruptWeightsError
from . import dtypes
from .header import check_header
from .source import TensorMeta, TensorSource

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Return ``(header, data_start)`` of a safetensors file; raise on a corrupt file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptWeightsError(f"{path}: not a safetensors file (shorter than 8 bytes); re-download or re-save it")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise CorruptWeightsError(f"{path}: corrupt safetensors header (length {length}); re-download or re-save it")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptWeightsError(f"{path}: corrupt safetensors header ({error}); re-download or re-save it") from None
        except RecursionError:
            raise CorruptWeightsError(f"{path}: corrupt safetensors header (nested too deeply); re-download or re-save it") from None
    data_start = 8 + length
    return check_header(header, str(path), size - data_start), data_start


class SafetensorsFile(TensorSource):
    """One ``.safetensors`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, self._data_start = read_header(self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries: dict[str, tuple[TensorMeta, int]] = {}
        for key, value in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if value["dtype"] not in dtypes.STORAGE:
                raise CorruptWeightsError(f"{self.path}: tensor {key!r} has unsupported dtype {value['dtype']}")
            meta = TensorMeta(value["dtype"], tuple(value["shape"]))
            begin, end = value["data_offsets"]
            if end - begin != meta.nbytes:
                raise CorruptWeightsError(f"{self.path}: tensor {key!r} has inconsistent offsets; re-save the file")
            self._entries[key] = (meta, begin)
        self._fd: int | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def meta(self, key: str) -> TensorMeta:
        return self._entries[key][0]

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        meta, begin = self._entries[key]
        storage = dtypes.STORAGE[meta.dtype]
        if out is None:
            out = np.empty(stop - start, dtype=storage)
        view = memoryview(out.view(np.uint8).reshape(-1))
        offset = self._data_start + begin + start * storage.itemsize
        done, fd = 0, self._descriptor()
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise CorruptWeightsError(f"{self.path}: unexpected end of file while reading {key!r}")
            done += got
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MultiFileSource(TensorSource):
    """Several files seen as one state dict (sharded checkpoints, folders of tensors)."""

    def __init__(self, sources: list[TensorSource], origin: str):
        self.sources = sources
        self._owner: dict[str, TensorSource] = {}
        for source in sources:
            for key in source.keys():
                if key in self._owner:
                    raise CorruptWeightsError(
                        f"{origin}: tensor {key!r} appears in more than one weight file; "
                        "keep one copy (or give the index file that names the right shard)"
                    )
                self._owner[key] = source

    def keys(self) -> list[str]:
        return list(self._owner)

    def meta(self, key: str) -> TensorMeta:
        return self._owner[key].meta(key)

    def read(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        return self._owner[key].read(key, start, stop, out)

    def close(self) -> None:
        for source in self.sources:
            source.close()
