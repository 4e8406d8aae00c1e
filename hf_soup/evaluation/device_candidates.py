"""Candidate soups formed on the evaluation device and copied into the task model in place.

The task model is built once; a map from checkpoint keys to its parameters is computed
once (through :mod:`hf_soup.compat.transformers_keys`; the conversions in use are
renames). Ingredient tensors reach the device through pinned host buffers, or stay
there while they fit under ``evaluation.device_memory``. Greedy's running sums and
subset means are formed there with the engine's own functions
(:func:`~hf_soup.methods.linear_math.linear_combination_torch` through a method's
``merge_torch``, then :func:`~hf_soup.engine.rounding.round_to_storage_torch`), so the
scored candidate holds exactly the bytes the engine writes for the same plan.

>>> candidates = candidates_for(model, alignment.tensors, sources, budget=None)   # doctest: +SKIP
>>> candidates.load(UniformSoup(UniformSoup.Params()), [0, 2])                    # model now holds the soup  # doctest: +SKIP
>>> running = candidates.running_sum(); running.add(0); running.load_candidate(2)  # doctest: +SKIP

Where a conversion is not a pure rename (fused or split weights), or a model weight
has no checkpoint key, :class:`HostCandidates` keeps the engine-on-the-host path.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..errors import EvaluationError
from ..io import dtypes
from ..methods.base import ChunkInfo, TensorMethod

logger = logging.getLogger("hf_soup")


def parameter_map(model: Any, tensors: Sequence[Any]) -> dict[str, str] | None:
    """Checkpoint key -> the model's parameter or buffer name, or ``None`` when only a conversion can load them.

    ``None`` when a model weight is reached through a converter (not a rename), a shape
    differs, or a model weight that is neither tied nor a buffer has no checkpoint key.
    Checkpoint keys the model does not have are left out (transformers ignores them too);
    of two keys sharing one storage (tied weights) only the tie's source is kept.
    """
    from ..compat.transformers_keys import reverse_rename, reverse_rules

    renamings, converters = reverse_rules(model)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    by_checkpoint: dict[str, tuple[str, Any]] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        checkpoint, converted = reverse_rename(name, renamings, converters)
        if converted is not None:
            return None
        by_checkpoint[checkpoint] = (name, value)
    out: dict[str, str] = {}
    covered: set[str] = set()
    storages: set[int] = set()
    for tensor in tensors:
        entry = by_checkpoint.get(tensor.key)
        if entry is None:
            continue
        name, value = entry
        if tuple(value.shape) != tuple(tensor.shape):
            return None
        covered.add(name)
        if name in tied:
            continue
        if value.data_ptr() in storages and value.numel():
            return None
        storages.add(value.data_ptr())
        out[tensor.key] = name
    buffers = {name for name, _ in model.named_buffers()}
    required = {name for name, _ in by_checkpoint.values()} - tied - buffers
    return out if required <= covered else None


def _working_bytes(tensor: Any) -> int:
    """Device bytes to form one candidate tensor: the raw input, float32, float64 result and scratch."""
    return tensor.meta.numel * (dtypes.itemsize(tensor.dtype) + 4 + 8 + 8)


def _size(nbytes: int) -> str:
    """``"1.5 GiB"``, ``"12.0 MiB"``, ``"512 bytes"``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


class _Staging:
    """Two pinned host buffers used in turn; a buffer is rewritten only once its copy to the device is done."""

    def __init__(self, device: Any):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self.buffers: list[Any] = [None, None]
        self.events: list[Any] = [None, None]
        self.turn = 0
        self._torch = torch

    def read(self, source: Any, key: str, numel: int) -> Any:
        """``key`` of ``source`` on the device in its exact dtype (``source.exact_dtype``), flat."""
        torch = self._torch
        storage = source.exact_dtype(key)
        nbytes = max(1, numel * dtypes.itemsize(storage))
        slot, self.turn = self.turn, 1 - self.turn
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        buffer = self.buffers[slot]
        if buffer is None or buffer.numel() < nbytes:
            buffer = self.buffers[slot] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.cuda)
        host = buffer[: numel * dtypes.itemsize(storage)].numpy().view(dtypes.STORAGE[storage])
        if storage == "F32" and source.meta(key).dtype != "F32":  # computed in float32 by the source
            source.read_float32(key, 0, numel, host)
        else:
            source.read(key, 0, numel, host)
        raw = buffer[: numel * dtypes.itemsize(storage)]
        if self.cuda:
            moved = raw.to(self.device, non_blocking=True)
            self.events[slot] = torch.cuda.Event()
            self.events[slot].record()
        else:
            moved = raw.clone()  # the buffer is reused by the next read
        return moved.view(torch.bfloat16 if storage == "BF16" else getattr(torch, dtypes.TORCH_NAMES[storage]))


class DeviceCandidates:
    """Forms candidates on the model's device and copies them into its parameters (see the module doc).

    ``budget``: device bytes for the candidate's working memory, a greedy running sum
    (float64) and resident ingredient tensors, in that order of priority (``None``: half
    the device's free memory). Raises :class:`EvaluationError` when even the largest
    tensor cannot be formed within it. The running sum keeps the tensors that fit in
    :attr:`sum_bytes`; ingredient tensors are kept resident in the order first used while
    they fit in :attr:`resident_bytes`; the others are read again for every candidate. A
    uniform or weighted soup reads its terms one at a time, so a streamed subset mean of k
    ingredients holds one ingredient tensor at a time, whatever k.
    """

    def __init__(self, model: Any, builder: Any, targets: dict[str, str], budget: int | None = None):
        import torch

        self.model = model
        self.builder = builder
        self.sources = dict(builder.sources)
        self.targets = targets
        tensors = builder.tensors
        self.device = next(model.parameters()).device
        self.merged = [t for t in tensors if t.action == "merge" and t.key in targets]
        self.copied = [t for t in tensors if t.action == "copy" and t.key in targets]
        self._staging = _Staging(self.device)
        self._resident: dict[tuple[int, str], Any] = {}
        self._torch = torch
        self._weights: dict[str, Any] = {}
        self._buffers: dict[str, Any] = {}
        budget = default_budget(self.device) if budget is None else int(budget)
        self.budget = budget
        largest = max(self.merged, key=_working_bytes, default=None)
        need = _working_bytes(largest) if largest is not None else 0
        if largest is not None and need > budget:
            raise EvaluationError(
                f"evaluation.device_memory: forming tensor {largest.key!r} ({largest.meta.numel:,} elements) on "
                f"{self.device} needs {_size(need)}, more than the memory budget of {_size(budget)}; "
                "raise evaluation.device_memory (bytes, or e.g. '8GiB') or evaluate on a device with more memory"
            )
        self.working_bytes = need
        room = max(0, budget - need)
        self.sum_bytes = min(room, sum(8 * t.meta.numel for t in self.merged))
        self.resident_bytes = room - self.sum_bytes
        self._resident_used = 0
        self._copies = self._read_copies()

    @property
    def num_ingredients(self) -> int:
        return len(self.sources)

    def _read_copies(self) -> dict[str, Any]:
        """``copy`` tensors (integer buffers, ``on_missing: first``): the same in every candidate, read once."""
        from ..engine.chunks import ReadBuffers, WorkItem, read_copy

        buffers = ReadBuffers()
        torch = self._torch
        out = {}
        for tensor in self.copied:
            values = np.array(read_copy(WorkItem(tensor, 0, tensor.meta.numel), self.sources[tensor.copy_from], buffers))
            if tensor.dtype == "BF16":
                values = torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
            else:
                values = torch.from_numpy(values)
            out[tensor.key] = values.to(self.device)
        return out

    def ingredient_tensor(self, index: int, tensor: Any) -> Any:
        """Ingredient ``index``'s ``tensor`` on the device, flat, widened exactly as the engine widens it."""
        torch = self._torch
        key = tensor.sources[index]
        value = self._resident.get((index, key))
        if value is None:
            value = self._staging.read(self.sources[index], key, tensor.meta.numel)
            if self._resident_used + value.nbytes <= self.resident_bytes:
                self._resident[(index, key)] = value
                self._resident_used += value.nbytes
        if value.dtype in (torch.float32, torch.float64):
            return value
        return value.to(torch.float32)

    def ingredient_parameter(self, index: int, name: str, dtype: Any) -> Any:
        """Ingredient ``index``'s value of model tensor ``name``, flat in ``dtype``, exactly as :meth:`load` of
        the uniform soup of ``[index]`` puts it there (the engine's arithmetic, rounded once to the output dtype).

        Raises ``KeyError`` for a tensor that is no merged checkpoint tensor's (read the model instead).
        """
        from ..engine.rounding import round_to_storage_torch

        tensor = self._by_target[name]
        values = round_to_storage_torch(self.linear(tensor, [index], [1.0], 1.0), tensor.dtype)
        if tensor.dtype == "BF16":
            values = values.view(self._torch.bfloat16)
        return values.to(dtype)

    @property
    def parameter_names(self) -> set[str]:
        """The model tensors :meth:`ingredient_parameter` can read."""
        return set(self._by_target)

    @property
    def _by_target(self) -> dict[str, Any]:
        if getattr(self, "_targets_of", None) is None:
            self._targets_of = {self.targets[t.key]: t for t in self.merged}
        return self._targets_of

    @property
    def spare_bytes(self) -> int:
        """The budget beyond the working memory of the largest tensor (what a running sum and resident tensors share)."""
        return max(0, self.budget - self.working_bytes)

    def reserve(self, nbytes: int) -> None:
        """Take ``nbytes`` of :attr:`spare_bytes` for another use (learned training): the running sum and the
        resident ingredient tensors keep only what is left (tensors kept beyond it are read again when used)."""
        left = max(0, self.spare_bytes - int(nbytes))
        self.sum_bytes = min(self.sum_bytes, left)
        self.resident_bytes = left - self.sum_bytes
        for key in reversed(list(self._resident)):
            if self._resident_used <= self.resident_bytes:
                break
            self._resident_used -= self._resident.pop(key).nbytes

    def buffer(self, name: str, numel: int) -> Any:
        """A reused flat float64 work tensor of ``numel`` elements (allocating each time costs more than the math)."""
        torch = self._torch
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            largest = max((t.meta.numel for t in self.merged), default=0)
            buffer = self._buffers[name] = torch.empty(max(numel, largest), dtype=torch.float64, device=self.device)
        return buffer[:numel]

    def _put(self, tensor: Any, values: Any, rounded: bool = False) -> None:
        """Round ``values`` once to ``tensor``'s output dtype (the engine's function) and copy it into the model."""
        from ..engine.rounding import round_to_storage_torch

        torch = self._torch
        target = self._weights[self.targets[tensor.key]]
        with torch.no_grad():
            if not rounded and tensor.dtype == "F32" and target.dtype == torch.float32 and target.is_contiguous():
                round_to_storage_torch(values, "F32", out=target.view(-1))  # straight into the parameter
                return
            if not rounded:
                values = round_to_storage_torch(values, tensor.dtype)
                if tensor.dtype == "BF16":
                    values = values.view(torch.bfloat16)
            target.copy_(values.view(target.shape))

    def _bind(self) -> None:
        """Look the model's tensors up again (a load through transformers may have replaced them); put the copies."""
        self._weights = self.model.state_dict(keep_vars=True)
        for tensor in self.copied:
            self._put(tensor, self._copies[tensor.key], rounded=True)

    def load(self, method: TensorMethod, indices: Sequence[int]) -> None:
        """Put ``method``'s soup of ``indices`` (needs ``merge_torch``) into the model."""
        self._bind()
        for tensor in self.merged:
            numel = tensor.meta.numel
            terms = _linear_terms(method, tensor.key, len(indices))
            if terms is not None:  # its merge_torch's arithmetic, reading one term at a time into reused buffers
                values = self.linear(tensor, indices, *terms)
            else:
                chunks = [self.ingredient_tensor(i, tensor) for i in indices]
                values = method.merge_torch(ChunkInfo(tensor.key, tensor.shape, 0, numel), chunks)  # type: ignore[attr-defined]
                del chunks
            self._put(tensor, values)
        self.model.eval()

    def linear(self, tensor: Any, indices: Sequence[int], weights: Sequence[float], divisor: float) -> Any:
        """``sum_k weights[k] * x_indices[k] / divisor`` of ``tensor`` (the engine's float64 arithmetic), one read at a time."""
        from ..methods.linear_math import linear_combination_torch

        numel = tensor.meta.numel
        return linear_combination_torch(_OneAtATime(self, indices, tensor), weights, divisor,
                                        out=self.buffer("out", numel), scratch=self.buffer("scratch", numel))

    def running_sum(self) -> "DeviceRunningSum":
        """An empty float64 running sum on the device (greedy soup)."""
        return DeviceRunningSum(self)


def _linear_terms(method: TensorMethod, key: str, count: int) -> tuple[list[float], float] | None:
    """``(weights, divisor)`` of a linear soup's tensor ``key`` (its ``linear_terms``), else ``None``."""
    return method.linear_terms(count, key)


class _OneAtATime:
    """The ingredient tensors of a linear soup, read when indexed; only the last one read is held.

    :func:`~hf_soup.methods.linear_math.linear_combination_torch` reads its terms once each,
    in order, so a streamed subset mean holds one ingredient tensor at a time.
    """

    def __init__(self, candidates: DeviceCandidates, indices: Sequence[int], tensor: Any):
        self.candidates, self.indices, self.tensor = candidates, list(indices), tensor
        self._position: int | None = None
        self._value: Any = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Any:
        position = range(len(self.indices))[position]
        if position != self._position:
            self._value = None  # release the previous tensor before reading the next
            self._value = self.candidates.ingredient_tensor(self.indices[position], self.tensor)
            self._position = position
        return self._value


class DeviceRunningSum:
    """The float64 sum of the kept ingredients, on the device; same additions as the engine's uniform soup.

    The sum starts from the first ingredient itself and adds the next ones in the order
    of :meth:`add`; :meth:`load_candidate` adds one more and divides once, so a uniform
    plan listing :attr:`members` in that order writes the candidate's bytes. Tensors
    whose sum does not fit in the budget (``candidates.sum_bytes``) are summed again from
    the streamed members for each candidate, with the same additions in the same order.
    """

    def __init__(self, candidates: DeviceCandidates):
        self.candidates = candidates
        self.sums: dict[str, Any] = {}
        self.count = 0
        self.members: list[int] = []
        self.kept: set[str] = set()
        room = candidates.sum_bytes
        for tensor in candidates.merged:
            if 8 * tensor.meta.numel <= room:
                self.kept.add(tensor.key)
                room -= 8 * tensor.meta.numel

    def add(self, index: int) -> None:
        torch = self.candidates._torch
        for tensor in self.candidates.merged:
            if tensor.key not in self.kept:
                continue
            values = self.candidates.ingredient_tensor(index, tensor)
            if self.count:  # widened exactly first: the CPU adds mixed dtypes slowly
                self.sums[tensor.key].add_(self.candidates.buffer("scratch", values.numel()).copy_(values))
            else:
                self.sums[tensor.key] = values.to(torch.float64, copy=True)
        self.count += 1
        self.members.append(index)

    def load_candidate(self, index: int) -> None:
        """Put the soup of the kept ingredients and ``index`` into the model."""
        from ..methods.linear_math import linear_combination_torch

        candidates = self.candidates
        candidates._bind()
        for tensor in candidates.merged:
            if tensor.key not in self.kept:  # x_m0 + x_m1 + ... + x_index, as the kept sum adds them
                members = self.members + [index]
                candidates._put(tensor, candidates.linear(tensor, members, [1.0] * len(members), float(len(members))))
                continue
            values = candidates.ingredient_tensor(index, tensor)
            terms = [self.sums[tensor.key], values] if self.count else [values]
            numel = values.numel()
            candidates._put(tensor, linear_combination_torch(
                terms, [1.0] * len(terms), float(self.count + 1),
                out=candidates.buffer("out", numel), scratch=candidates.buffer("scratch", numel)))
        candidates.model.eval()


class HostCandidates:
    """Today's path, kept where the key mapping is not a pure rename: the engine on the host + key conversion."""

    def __init__(self, model: Any, builder: Any):
        self.model = model
        self.builder = builder

    @property
    def num_ingredients(self) -> int:
        return self.builder.num_ingredients

    def load(self, method: TensorMethod, indices: Sequence[int]) -> None:
        from .task_model import load_checkpoint_weights

        load_checkpoint_weights(self.model, self.builder.merge(method, indices))

    def running_sum(self) -> "_HostRunningSum":
        return _HostRunningSum(self)


class _HostRunningSum:
    def __init__(self, candidates: HostCandidates):
        self.model = candidates.model
        self.running = candidates.builder.running_sum()

    @property
    def members(self) -> list[int]:
        return self.running.members

    def add(self, index: int) -> None:
        self.running.add(index)

    def load_candidate(self, index: int) -> None:
        from .task_model import load_checkpoint_weights

        load_checkpoint_weights(self.model, self.running.candidate(index))


def default_budget(device: Any) -> int:
    """Half the device's free memory (host: half of ``MemAvailable``; 1 GiB when unknown)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 2
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 1 << 30


def candidates_for(model: Any, builder: Any, budget: int | None = None) -> DeviceCandidates | HostCandidates:
    """Device candidates for ``model`` when its weights are checkpoint keys renamed, else the host path."""
    targets = parameter_map(model, builder.tensors)
    if targets is None:
        logger.info("evaluation: %s loads through a weight conversion; candidates are built on the host",
                    type(model).__name__)
        return HostCandidates(model, builder)
    return DeviceCandidates(model, builder, targets, budget)


def load_plan(candidates: Any, method: TensorMethod, indices: Sequence[int]) -> None:
    """Put ``method``'s soup of ``indices`` into the model: on the device when the method has ``merge_torch``."""
    from ..engine.device import has_torch_path

    if isinstance(candidates, DeviceCandidates) and not has_torch_path(method):
        HostCandidates(candidates.model, candidates.builder).load(method, indices)
        return
    candidates.load(method, indices)


__all__ = ["DeviceCandidates", "DeviceRunningSum", "HostCandidates", "candidates_for", "default_budget", "load_plan",
           "parameter_map"]
