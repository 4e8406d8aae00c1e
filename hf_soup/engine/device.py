"""Where the merge math runs: ``device: cpu | cuda | auto``, and the torch path for GPUs.

The engine hands methods flat float32 numpy chunks (bounded in size by the engine's
buffer, so one huge tensor never has to fit on a GPU at once). A tensor method that
also defines ``merge_torch(info, chunks) -> torch.Tensor`` can run on a GPU:
:func:`on_device` wraps it so that each chunk is copied to the device, merged there
and copied back. Methods without ``merge_torch`` keep their numpy math on the CPU.

>>> resolve_device("cpu")
'cpu'
>>> from hf_soup.methods.uniform import UniformSoup
>>> on_device(UniformSoup(UniformSoup.Params()), "cpu").name  # the CPU path is unchanged
'uniform'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DistributedError, RecipeError
from ..methods.base import ChunkInfo, TensorMethod

DEVICES = ("cpu", "cuda", "auto")
logger = logging.getLogger("hf_soup")


def _gpu_hint() -> bool:
    """Whether an NVIDIA GPU may be visible, checked without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia/gpus").is_dir()


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, but torch is imported only when a GPU may exist."""
    if not _gpu_hint():
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """Turn ``cpu | cuda | auto`` into a torch device string (``cuda:<local_rank>`` per process).

    ``auto`` means a CUDA GPU when one is visible, else the CPU. ``cuda`` without a
    visible GPU is an error, raised before any work.
    """
    if device not in DEVICES and not device.startswith("cuda:"):
        raise RecipeError(f"device: {device!r} is not one of {', '.join(DEVICES)}; choose one of them")
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return "cpu"
    if not cuda_available():
        raise RecipeError("device: cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device.startswith("cuda:"):
        return device
    if local_rank is None:
        return "cuda"
    import torch

    return gpu_of_rank(local_rank, torch.cuda.device_count())


def gpu_of_rank(local_rank: int, num_gpus: int) -> str:
    """``cuda:<local_rank>``; a clear error when the machine runs more processes than it has GPUs.

    >>> gpu_of_rank(0, 1)
    'cuda:0'
    """
    if local_rank >= num_gpus:
        raise DistributedError(
            f"device: process {local_rank} on this machine has no GPU of its own ({num_gpus} visible); launch at most "
            f"{num_gpus} process(es) per machine (torchrun --nproc_per_node={num_gpus}, accelerate launch "
            f"--num_processes {num_gpus}), or merge on the CPU (--device cpu)"
        )
    return f"cuda:{local_rank}"


class DeviceMethod(TensorMethod):
    """``method`` with its math moved to ``device`` through its ``merge_torch``.

    Each chunk goes to the device, is merged there in float32 and comes back, so device
    memory holds at most N + 1 chunks. Elementwise float32 arithmetic is IEEE-exact on
    CPUs and GPUs alike, so ``merge_torch`` written with the same operations in the same
    order as ``merge`` gives the same bytes.
    """

    def __init__(self, method: TensorMethod, device: str):
        super().__init__(method.params)
        self.method = method
        self.device = device
        self.name = method.name  # type: ignore[misc]
        self.buffer_bytes = method.buffer_bytes  # type: ignore[misc]

    def merge(self, info: ChunkInfo, chunks: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        moved = [torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device) for chunk in chunks]
        result = self.method.merge_torch(info, moved)  # type: ignore[attr-defined]
        return result.to("cpu").numpy()

    def report(self) -> dict[str, Any]:
        return self.method.report()


def has_torch_path(method: TensorMethod) -> bool:
    """Whether ``method`` defines ``merge_torch`` (so it can run on a GPU)."""
    return callable(getattr(method, "merge_torch", None))


def on_device(method: TensorMethod, device: str, force_torch: bool = False) -> TensorMethod:
    """The method to stream with: ``method`` itself on the CPU, a :class:`DeviceMethod` on a GPU.

    ``force_torch`` runs the torch path even on the CPU (used to check it matches numpy).
    """
    if device == "cpu" and not force_torch:
        return method
    if not has_torch_path(method):
        if device != "cpu":
            logger.info("method %s has no torch path; its math runs on the CPU", method.name)
        return method
    return DeviceMethod(method, device)


__all__ = ["DEVICES", "DeviceMethod", "cuda_available", "has_torch_path", "on_device", "resolve_device"]
