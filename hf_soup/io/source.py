"""The reader interface the engine and the alignment see for every ingredient."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from math import prod

import numpy as np

from . import dtypes


@dataclass(frozen=True)
class TensorMeta:
    """Dtype (safetensors name) and shape of one stored tensor."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)


class TensorSource(ABC):
    """Lazy, per-tensor access to one ingredient's weights.

    ``read`` returns the flat elements ``[start, stop)`` of a tensor in its storage
    dtype, so no reader ever holds a whole model.
    """

    @abstractmethod
    def keys(self) -> list[str]:
        """Tensor names, in storage order."""

    @abstractmethod
    def meta(self, key: str) -> TensorMeta:
        """Dtype and shape of ``key``."""

    @abstractmethod
    def read(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Flat elements ``[start, stop)`` of ``key`` in storage dtype (into ``out`` if given)."""

    def exact_dtype(self, key: str) -> str:
        """The dtype that holds ``key``'s values exactly: its storage dtype, or F32 for a tensor the
        source computes in float32 (e.g. base + LoRA delta), which ``read_float32`` then delivers."""
        return self.meta(key).dtype

    def read_float32(self, key: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Flat elements ``[start, stop)`` of ``key`` converted into float32 ``out``."""
        dtype = self.meta(key).dtype
        if dtype == "F32":
            return self.read(key, start, stop, out)
        return dtypes.to_float32(self.read(key, start, stop), dtype, out)

    def close(self) -> None:
        """Release open files."""

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
