"""Stream tensors into a safetensors file without holding them in memory.

The header (every tensor's dtype, shape and offsets) is known before any merge work,
so it is written first and the data follows, chunk by chunk, in header order.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import numpy as np

from .source import TensorMeta


def header_bytes(entries: list[tuple[str, TensorMeta]], metadata: dict[str, str] | None = None) -> bytes:
    """Serialised safetensors header (length prefix included), padded to 8 bytes."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for key, meta in entries:
        header[key] = {"dtype": meta.dtype, "shape": list(meta.shape), "data_offsets": [offset, offset + meta.nbytes]}
        offset += meta.nbytes
    payload = json.dumps(header, separators=(",", ":")).encode()
    payload += b" " * (-len(payload) % 8)
    return struct.pack("<Q", len(payload)) + payload


class SafetensorsWriter:
    """Write one safetensors file: the header first, then tensor ranges at their offsets, then ``close``.

    ``write_range`` may be called from several threads, in any order (``os.pwrite``);
    ``append`` writes sequentially in header order.
    """

    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, TensorMeta]], metadata: dict | None = None):
        self.path = Path(path)
        self._expected = sum(meta.nbytes for _, meta in entries)
        header = header_bytes(entries, metadata)
        self._offsets: dict[str, tuple[int, int]] = {}
        offset = len(header)
        for key, meta in entries:
            self._offsets[key] = (offset, meta.nbytes)
            offset += meta.nbytes
        self._written = 0
        self._appended = len(header)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pwrite(header, 0)

    def _pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def write_range(self, key: str, byte_start: int, values: np.ndarray) -> None:
        """Write ``values`` (output dtype) at byte ``byte_start`` of tensor ``key``'s data."""
        begin, size = self._offsets[key]
        data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
        if byte_start < 0 or byte_start + data.size > size:
            raise RuntimeError(f"{self.path}: a write past the end of tensor {key!r}")
        self._pwrite(data, begin + byte_start)
        with self._lock:
            self._written += data.size

    def append(self, values: np.ndarray) -> None:
        """Append the next flat chunk of tensor data (already in the output dtype), in header order."""
        data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
        if self._written + data.size > self._expected:
            raise RuntimeError(f"{self.path}: more data than the header declares")
        self._pwrite(data, self._appended)
        self._appended += data.size
        with self._lock:
            self._written += data.size

    def abort(self) -> None:
        """Close the file without checking it (the caller discards it)."""
        os.close(self._fd)

    def close(self) -> None:
        """Finish the file; raise if fewer bytes were written than declared."""
        os.close(self._fd)
        if self._written != self._expected:
            raise RuntimeError(f"{self.path}: wrote {self._written} of {self._expected} bytes")
