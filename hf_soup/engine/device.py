"""Where the merge math runs: ``device: cpu | cuda | auto``, and the engine's torch path for GPUs.

A tensor method that also defines ``merge_torch(info, chunks) -> torch.Tensor`` runs on
a GPU: :class:`DeviceRunner` moves each work item there through pinned host buffers and
per-thread CUDA streams (items are bounded in size, so one huge tensor never has to fit
on a GPU at once). Methods without ``merge_torch`` keep their numpy math on the host.

>>> resolve_device("cpu")
'cpu'
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from ..errors import DistributedError, RecipeError
from ..io import dtypes
from ..io.source import TensorSource
from ..methods.base import ChunkInfo, TensorMethod
from .chunks import ReadBuffers, WorkItem, read_copy
from .finite import OVERFLOW_AT, FiniteGuard
from .rounding import round_to_storage_torch

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


def has_torch_path(method: TensorMethod) -> bool:
    """Whether ``method`` defines ``merge_torch`` (so it can run on a GPU)."""
    return callable(getattr(method, "merge_torch", None))


class _DeviceBuffers(threading.local):
    """Per-thread pinned host buffers (raw inputs, output) and a CUDA stream, reused across items."""

    def __init__(self) -> None:
        self.host: dict[str, Any] = {}
        self.stream: Any = None

    def get(self, name: str, nbytes: int, pin: bool) -> Any:
        import torch

        buffer = self.host.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pin)
            self.host[name] = buffer
        return buffer[:nbytes]


class DeviceRunner:
    """Runs one work item with the method's ``merge_torch`` on ``device``.

    A worker thread reads the item's raw bytes into its pinned host buffers, copies them
    to the device on its own CUDA stream (so one thread's copies overlap another's math),
    widens them there to float32 (exact), merges in float64, rounds once on the device
    with the host's integer arithmetic, copies the result back into pinned memory and
    writes it. Works on ``cpu`` too (no pinning), which tests use to check that the
    torch path gives the numpy path's bytes.
    """

    def __init__(self, method: TensorMethod, sources: dict[int, TensorSource], indices: Sequence[int], device: str,
                 guard: FiniteGuard | None = None):
        import torch

        self.method = method
        self.guard = guard
        self.sources = sources
        self.indices = list(indices)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.buffers = _DeviceBuffers()
        self.host_buffers = ReadBuffers()

    def _stream(self) -> Any:
        import torch

        if self.buffers.stream is None:
            self.buffers.stream = torch.cuda.Stream(device=self.device)
        return self.buffers.stream

    def _to_device(self, item: WorkItem, n: int, index: int) -> Any:
        """Ingredient ``index``'s range of the item, on the device, widened exactly to float32 (float64)."""
        import torch

        key = item.tensor.sources[index]
        source = self.sources[index]
        storage = source.exact_dtype(key)
        raw = self.buffers.get(f"raw{n}", item.count * dtypes.itemsize(storage), self.cuda)
        host = raw.numpy().view(dtypes.STORAGE[storage])
        if storage == "F32" and source.meta(key).dtype != "F32":  # computed in float32 by the source
            source.read_float32(key, item.start, item.stop, host)
        else:
            source.read(key, item.start, item.stop, host)
        moved = raw.to(self.device, non_blocking=True)
        if storage == "BF16":
            return moved.view(torch.bfloat16).to(torch.float32)
        values = moved.view(getattr(torch, dtypes.TORCH_NAMES[storage]))
        return values if storage in ("F32", "F64") else values.to(torch.float32)

    def _check_finite(self, tensor: Any, chunks: list, values: Any) -> None:
        """A quick device-side test (one copy to the host); the guard counts on host copies only when it fails.

        For a linear soup with no zero weight the result's extremes decide (see ``finite.within_range``);
        otherwise every input's sum is checked too.
        """
        import torch

        limit = OVERFLOW_AT.get(tensor.dtype, float("inf"))
        terms = self.method.linear_terms(len(self.indices), tensor.key)
        checks = [] if terms is not None and all(terms[0]) else [c.sum(dtype=torch.float64) for c in chunks]
        if values.numel():
            low, high = torch.aminmax(values)
            checks += [low.to(torch.float64), high.to(torch.float64)]
        if not checks:
            return
        low_high = torch.stack(checks).cpu()
        clean = bool(torch.isfinite(low_high).all())
        if clean and values.numel():
            clean = -limit < float(low_high[-2]) and float(low_high[-1]) < limit
        if not clean:
            self.guard.observe(tensor.key, [c.cpu().numpy() for c in chunks], self.indices, values.cpu().numpy(),
                               tensor.dtype)

    def run(self, item: WorkItem, sink: Any) -> None:
        import torch

        tensor = item.tensor
        if tensor.action == "copy":
            sink.put(tensor, item.start, read_copy(item, self.sources[tensor.copy_from], self.host_buffers))
            return
        stream = self._stream() if self.cuda else None
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            chunks = [self._to_device(item, n, index) for n, index in enumerate(self.indices)]
            info = ChunkInfo(tensor.key, tensor.shape, item.start, item.stop)
            values = self.method.merge_torch(info, chunks)  # type: ignore[attr-defined]
            if self.guard is not None:
                self._check_finite(tensor, chunks, values)
            rounded = round_to_storage_torch(values, tensor.dtype)
            storage = dtypes.STORAGE[tensor.dtype]
            out = self.buffers.get("out", rounded.numel() * storage.itemsize, self.cuda)
            out.view(rounded.dtype).copy_(rounded, non_blocking=True)
        if stream is not None:
            stream.synchronize()
        sink.put(tensor, item.start, out.numpy().view(storage))


__all__ = ["DEVICES", "DeviceRunner", "cuda_available", "has_torch_path", "resolve_device"]
