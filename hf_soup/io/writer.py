"""Stream tensors into a safetensors file without holding them in memory.

The header (every tensor's dtype, shape and offsets) is known before any merge work,
so it is written first and the data follows, chunk by chunk, in header order.
"""

from __future__ import annotations

import json
import os
import struct
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
    """Write one safetensors file: ``append`` chunks in header order, then ``close``."""

    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, TensorMeta]], metadata: dict | None = None):
        self.path = Path(path)
        self._expected = sum(meta.nbytes for _, meta in entries)
        self._written = 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write(header_bytes(entries, metadata))

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            done = os.write(self._fd, view)
            view = view[done:]

    def append(self, values: np.ndarray) -> None:
        """Append the next flat chunk of tensor data (already in the output dtype)."""
        values = np.ascontiguousarray(values)
        self._written += values.nbytes
        if self._written > self._expected:
            raise RuntimeError(f"{self.path}: more data than the header declares")
        self._write(values.view(np.uint8).reshape(-1))

    def abort(self) -> None:
        """Close the file without checking it (the caller discards it)."""
        os.close(self._fd)

    def close(self) -> None:
        """Finish the file; raise if fewer bytes were written than declared."""
        os.close(self._fd)
        if self._written != self._expected:
            raise RuntimeError(f"{self.path}: wrote {self._written} of {self._expected} bytes")
