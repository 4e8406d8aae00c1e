"""Sources backed by torch tensors: legacy ``.bin`` checkpoints and in-memory state dicts.

``.bin`` files are opened with ``torch.load(weights_only=True, mmap=True)`` only: no
arbitrary unpickling, and tensors stay on disk until read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import CorruptWeightsError, IngredientError
from . import dtypes
from .source import TensorMeta, TensorSource


def _as_numpy(tensor: Any) -> np.ndarray:
    """A flat numpy view of a CPU tensor or array, in safetensors storage dtype."""
    if isinstance(tensor, np.ndarray):
        return tensor.reshape(-1)
    import torch

    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    if flat.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return flat.view(torch.uint8).numpy()
    return flat.numpy()


def _meta_of(key: str, tensor: Any, origin: str) -> TensorMeta:
    if isinstance(tensor, np.ndarray):
        name = {np.dtype(v): k for k, v in dtypes.STORAGE.items() if k not in ("BF16", "F8_E4M3", "F8_E5M2")}.get(tensor.dtype)
        shape = tuple(tensor.shape)
    else:
        name = dtypes.FROM_TORCH.get(str(tensor.dtype).removeprefix("torch."))
        shape = tuple(tensor.shape)
    if name is None:
        raise IngredientError(f"{origin}: tensor {key!r} has unsupported dtype {tensor.dtype}; convert it to a float or integer type")
    return TensorMeta(name, shape)


class StateDictSource(TensorSource):
    """A mapping of names to torch tensors or numpy arrays (never modified)."""

    def __init__(self, state_dict: Mapping[str, Any], origin: str = "<state dict>"):
        self.origin = origin
        self._tensors = {}
        for key, value in state_dict.items():
            if not (isinstance(value, np.ndarray) or hasattr(value, "detach")):
                raise IngredientError(f"{origin}: entry {key!r} is a {type(value).__name__}, not a tensor; pass a state dict of tensors")
            self._tensors[key] = value
        self._meta = {k: _meta_of(k, v, origin) for k, v in self._tensors.items()}

    def keys(self) -> list[str]:
        return list(self._tensors)

    def meta(self, key: str) -> TensorMeta:
        return self._meta[key]

    def read(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        values = _as_numpy(self._tensors[key])[start:stop]
        if out is None:
            result = values.view()
            result.flags.writeable = False
            return result
        out[...] = values
        return out


def load_torch_checkpoint(path: str | os.PathLike) -> StateDictSource:
    """Open a ``pytorch_model.bin``-style file safely (weights only, memory-mapped)."""
    import pickle

    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise CorruptWeightsError(
            f"{path}: refused to unpickle ({str(error).splitlines()[0]}); hf_soup only loads plain "
            "tensors from .bin files. Convert the checkpoint to safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CorruptWeightsError(f"{path}: cannot read this torch checkpoint ({error}); re-download or re-save it") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CorruptWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return StateDictSource(state, origin=str(path))
