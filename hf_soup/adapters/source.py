"""An adapter seen as a full model: base weights plus its LoRA update, computed on demand.

:class:`AdapterSource` is a :class:`~hf_soup.io.source.TensorSource` whose keys are the
base checkpoint's. For a LoRA-targeted weight, ``read_float32(key, start, stop)``
returns elements ``[start, stop)`` of ``base + scale · B @ A``, computing only the rows
that cover the range; untargeted tensors come straight from the base, and
``modules_to_save`` tensors from the adapter file. So the engine soups adapters exactly
like full fine-tunes, while memory stays O(chunk + one adapter's factors for one tensor).

>>> source = AdapterSource.open(adapter_ingredient)  # doctest: +SKIP
>>> source.read_float32("model.layers.0.self_attn.q_proj.weight", 0, 4096, out)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AdapterBaseError, CorruptWeightsError, UnsupportedAdapterError
from ..io import dtypes
from ..ingredients.ingredient import Ingredient
from ..io.source import TensorMeta, TensorSource
from .config import CONFIG_FILE, LoraAdapterConfig
from .layout import BaseLayout

PEFT_PREFIX = "base_model.model."
_PAIRS = {".lora_A.weight": ("A", False), ".lora_B.weight": ("B", False),
          ".lora_embedding_A": ("A", True), ".lora_embedding_B": ("B", True)}


@dataclass(frozen=True)
class LoraTarget:
    """One LoRA-adapted weight: ``ΔW = scale · left @ right`` in the base tensor's layout.

    ``transposed`` is ``False`` for ``nn.Linear`` (left = B, right = A) and ``True`` for
    weights stored ``(in, out)`` — GPT-2 ``Conv1D`` and embeddings (left = Aᵀ, right = Bᵀ).
    """

    module: str
    key: str
    a_key: str
    b_key: str
    embedding: bool
    transposed: bool
    rank: int
    scale: float

    @property
    def kind(self) -> str:
        return "embedding" if self.embedding else ("conv1d" if self.transposed else "linear")


def _strip(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def _classify(adapter: TensorSource, config: LoraAdapterConfig) -> tuple[dict[str, dict], dict[str, str]]:
    """Split adapter keys into LoRA pairs (by module) and full ``modules_to_save`` tensors (by name)."""
    pairs: dict[str, dict] = {}
    full: dict[str, str] = {}
    for key in adapter.keys():
        name = _strip(key)
        suffix = next((s for s in _PAIRS if name.endswith(s)), None)
        if suffix is not None:
            side, embedding = _PAIRS[suffix]
            entry = pairs.setdefault(name[: -len(suffix)], {"embedding": embedding})
            entry[side] = key
            continue
        if "lora_magnitude_vector" in name:
            raise UnsupportedAdapterError(f"{config.origin}: {key!r} is a DoRA magnitude vector (use_dora); DoRA adapters cannot be souped")
        if ".lora_" in "." + name:
            raise UnsupportedAdapterError(
                f"{config.origin}: tensor {key!r} is not a LoRA A/B factor (lora_bias, or another LoRA variant); "
                "only plain LoRA is merged"
            )
        module = name.rsplit(".", 1)[0]
        if not any(module == m or module.endswith("." + m) for m in config.modules_to_save):
            raise UnsupportedAdapterError(
                f"{config.origin}: the adapter holds the full tensor {key!r} but its module is not in modules_to_save "
                f"({list(config.modules_to_save)}); trained biases (bias != 'none') are not merged"
            )
        full[name] = key
    for module, entry in pairs.items():
        if "A" not in entry or "B" not in entry:
            raise CorruptWeightsError(f"{config.origin}: module {module!r} has only one of its LoRA factors; re-save the adapter")
    return pairs, full


def _is_transposed(kind: str | None, base: TensorMeta, out_dim: int, in_dim: int, module: str, config) -> bool | None:
    """Whether the base stores this weight as ``(in, out)``; ``None`` when its shape fits neither way."""
    normal, flipped = base.shape == (out_dim, in_dim), base.shape == (in_dim, out_dim)
    if kind == "conv1d":
        return True if flipped else None
    if kind == "linear":
        return False if normal else None
    if kind not in (None, "embedding"):
        raise UnsupportedAdapterError(f"{config.origin}: LoRA on {module!r} (a {kind}) is not supported; only Linear, Conv1D and Embedding layers")
    if normal and flipped:
        return config.fan_in_fan_out
    return False if normal else (True if flipped else None)


def plan_targets(adapter: TensorSource, base: TensorSource, config: LoraAdapterConfig,
                 layout: BaseLayout) -> tuple[dict[str, LoraTarget], dict[str, tuple[str, str]]]:
    """Map the adapter onto the base: ``(targets by base key, replaced base key -> (name, adapter key))``.

    Reads only tensor metadata. Raises on unsupported layers, unknown or misshapen targets.
    """
    origin = config.origin
    pairs, full = _classify(adapter, config)
    if not pairs and not full:
        raise CorruptWeightsError(f"{origin}: the adapter holds no LoRA weights; re-save it")
    targets: dict[str, LoraTarget] = {}
    for module, entry in sorted(pairs.items()):
        a_meta, b_meta = adapter.meta(entry["A"]), adapter.meta(entry["B"])
        if len(a_meta.shape) != 2 or len(b_meta.shape) != 2:
            raise UnsupportedAdapterError(
                f"{origin}: LoRA on {module!r} has factors of shape {list(a_meta.shape)} and {list(b_meta.shape)}; "
                "LoRA on convolution layers is not supported, only Linear, Conv1D and Embedding layers"
            )
        rank = a_meta.shape[0]
        if b_meta.shape[1] != rank:
            raise CorruptWeightsError(f"{origin}: {module!r} has lora_A of rank {rank} but lora_B of shape {list(b_meta.shape)}; re-save the adapter")
        if rank != config.rank(module):
            raise CorruptWeightsError(
                f"{origin}: {module!r} has LoRA factors of rank {rank}, but {CONFIG_FILE} gives it r={config.rank(module)} "
                "(r / rank_pattern); the config does not belong to these weights — re-save the adapter"
            )
        if not (dtypes.is_float(a_meta.dtype) and dtypes.is_float(b_meta.dtype)):
            raise UnsupportedAdapterError(f"{origin}: {module!r} has non-float LoRA factors ({a_meta.dtype}); quantised adapters are not supported")
        key = layout.checkpoint_key(module + ".weight", origin)
        base_meta = base.meta(key)
        # lora_A: (r, in) and lora_B: (out, r) for Linear/Conv1D; lora_embedding_A: (r, num), _B: (dim, r).
        in_dim, out_dim = a_meta.shape[1], b_meta.shape[0]
        if entry["embedding"]:
            transposed = True if base_meta.shape == (in_dim, out_dim) else None
        else:
            square = base_meta.shape == (out_dim, in_dim) == (in_dim, out_dim)
            kind = layout.module_kind(module) if square else None  # non-square: the shape decides
            transposed = _is_transposed(kind, base_meta, out_dim, in_dim, module, config)
        if transposed is None:
            raise AdapterBaseError(
                f"{origin}: LoRA on {module!r} implies a weight of shape {[out_dim, in_dim]}, but the base tensor "
                f"{key!r} has shape {list(base_meta.shape)}; the adapter was trained on another base model — set base_model:"
            )
        if not dtypes.is_float(base_meta.dtype):
            raise UnsupportedAdapterError(f"{origin}: base tensor {key!r} is {base_meta.dtype}; LoRA on quantised bases is not supported")
        targets[key] = LoraTarget(module, key, entry["A"], entry["B"], entry["embedding"], transposed, rank,
                                  config.scale(module, rank))
    replaced: dict[str, tuple[str, str]] = {}
    for name, adapter_key in sorted(full.items()):
        key = layout.checkpoint_key(name, origin)
        if adapter.meta(adapter_key).shape != base.meta(key).shape:
            raise AdapterBaseError(
                f"{origin}: modules_to_save tensor {adapter_key!r} has shape {list(adapter.meta(adapter_key).shape)}, "
                f"the base's {key!r} {list(base.meta(key).shape)}; the adapter was trained on another base — set base_model:"
            )
        if key in targets:
            raise UnsupportedAdapterError(f"{origin}: {key!r} is both LoRA-adapted and in modules_to_save; re-train without the overlap")
        replaced[key] = (name, adapter_key)
    return targets, replaced


_BLAS: list = []


def _one_blas_thread():
    """A context that runs BLAS on one thread (``threadpoolctl``, when installed).

    The rank-r products here are memory-bound; a multi-threaded OpenBLAS spinning beside
    the engine's prefetch thread was measured 7x slower on a loaded 2-core machine.
    """
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except ImportError:
            _BLAS.append(None)
    if _BLAS[0] is None:
        from contextlib import nullcontext

        return nullcontext()
    return _BLAS[0].limit(limits=1, user_api="blas")


def _float32(source: TensorSource, key: str) -> np.ndarray:
    meta = source.meta(key)
    return source.read_float32(key, 0, meta.numel, np.empty(meta.numel, dtype=np.float32)).reshape(meta.shape)


def lora_factors(adapter: TensorSource, target: LoraTarget) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` in float32 with ``ΔW = left @ right`` (the scale folded into ``left``)."""
    a, b = _float32(adapter, target.a_key), _float32(adapter, target.b_key)
    left, right = (a.T, b.T) if target.transposed else (b, a)
    return np.ascontiguousarray(left * np.float32(target.scale)), np.ascontiguousarray(right)


class AdapterSource(TensorSource):
    """The virtual full model ``base + ΔW`` of one LoRA adapter (see the module docstring)."""

    def __init__(self, base: TensorSource, adapter: TensorSource, config: LoraAdapterConfig, layout: BaseLayout):
        self.base, self.adapter, self.config = base, adapter, config
        self.targets, self.replaced = plan_targets(adapter, base, config, layout)
        self._cached: tuple[str, np.ndarray, np.ndarray] | None = None

    @classmethod
    def open(cls, ingredient: Any) -> "AdapterSource":
        """Open an adapter :class:`~hf_soup.ingredients.Ingredient` whose ``base`` is attached."""
        from ..io.safetensors_reader import SafetensorsFile
        from ..io.torch_source import load_torch_checkpoint

        if ingredient.base is None:
            raise AdapterBaseError(f"{ingredient.name}: the adapter's base model is not resolved yet; "
                                   "call hf_soup.adapters.attach_bases(ingredients) before opening it")
        base = ingredient.base.open()
        try:
            path = ingredient.files[0]
            adapter = SafetensorsFile(path) if path.suffix == ".safetensors" else load_torch_checkpoint(path)
            try:
                hint = (ingredient.adapter.raw.get("auto_mapping") or {}).get("base_model_class")
                layout = BaseLayout(base.keys(), ingredient.base.directory, hint)
                return cls(base, adapter, ingredient.adapter, layout)
            except BaseException:
                adapter.close()
                raise
        except BaseException:
            base.close()
            raise

    def keys(self) -> list[str]:
        return self.base.keys()

    def meta(self, key: str) -> TensorMeta:
        return self.base.meta(key)

    def exact_dtype(self, key: str) -> str:
        """F32 for tensors the adapter changes (base + delta, computed in float32), else the base's dtype."""
        return "F32" if key in self.targets or key in self.replaced else self.base.meta(key).dtype

    def factors(self, target: LoraTarget) -> tuple[np.ndarray, np.ndarray]:
        """This adapter's ``(left, right)`` for ``target`` (the last one is cached)."""
        cached = self._cached  # one local reference: safe if another thread replaces the cache meanwhile
        if cached is None or cached[0] != target.key:
            cached = (target.key, *lora_factors(self.adapter, target))
            self._cached = cached
        return cached[1], cached[2]

    def read_float32(self, key: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        if key in self.replaced:
            return self.adapter.read_float32(self.replaced[key][1], start, stop, out)
        self.base.read_float32(key, start, stop, out)
        target = self.targets.get(key)
        if target is not None and stop > start:
            left, right = self.factors(target)
            cols = right.shape[1]
            first, last = start // cols, -(-stop // cols)
            with _one_blas_thread():
                block = (left[first:last] @ right).reshape(-1)
            offset = first * cols
            out += block[start - offset: stop - offset]
        return out

    def read(self, key: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if key not in self.targets and key not in self.replaced:
            return self.base.read(key, start, stop, out)
        values = dtypes.from_float32(self.read_float32(key, start, stop, np.empty(stop - start, np.float32)),
                                     self.meta(key).dtype)
        if out is None:
            return values
        out[...] = values
        return out

    def close(self) -> None:
        self.adapter.close()
        self.base.close()


class AdapterIngredient(Ingredient):
    """A PEFT adapter ingredient: it opens as the full model ``base + ΔW`` once its ``base`` is attached."""

    def open(self) -> AdapterSource:
        return AdapterSource.open(self)
