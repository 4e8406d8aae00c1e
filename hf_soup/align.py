"""Align the ingredients' state dicts key by key.

One canonical key list (the reference ingredient's, after prefix normalisation), a key
map per ingredient, tied-weight aliases, shape and dtype checks. Nothing here reads
tensor data except to confirm that a suspected tied weight really is a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import AlignmentError, RecipeError
from .io import dtypes
from .io.source import TensorMeta, TensorSource

STRIPPED_PREFIXES = ("module.", "_orig_mod.")
ON_MISSING = ("error", "skip", "first")
_EMBEDDING_HINTS = ("embed_tokens", "wte", "word_embeddings", "shared", "embed_in", "tok_embeddings")
_MAX_LISTED = 10


def canonical_key(key: str) -> str:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile)."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


@dataclass
class AlignedTensor:
    """One output tensor: its name, shape, output dtype and where each ingredient keeps it.

    ``sources[i]`` is ingredient i's own key (``None`` when it lacks the tensor).
    ``action`` is ``"merge"`` (float tensors present everywhere) or ``"copy"``
    (integer/boolean buffers, or a missing key under ``on_missing: first``), in which
    case the data comes from ingredient ``copy_from``.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    sources: list[str | None]
    action: str = "merge"
    copy_from: int = 0

    @property
    def meta(self) -> TensorMeta:
        return TensorMeta(self.dtype, self.shape)


@dataclass
class Alignment:
    """The result of :func:`align`; ``summary()`` is what ``hf-soup inspect`` prints."""

    names: list[str]
    tensors: list[AlignedTensor]
    missing: dict[str, list[str]] = field(default_factory=dict)
    tied: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    dtype_differences: list[dict[str, Any]] = field(default_factory=list)
    model_types: list[str | None] = field(default_factory=list)

    @property
    def num_parameters(self) -> int:
        return sum(t.meta.numel for t in self.tensors)

    @property
    def copied(self) -> list[str]:
        return [t.key for t in self.tensors if t.action == "copy"]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description of the alignment."""
        return {
            "ingredients": self.names,
            "model_types": self.model_types,
            "num_tensors": len(self.tensors),
            "num_parameters": self.num_parameters,
            "shared_keys": sum(1 for t in self.tensors if None not in t.sources),
            "missing_keys": self.missing,
            "tied_weights": self.tied,
            "skipped_keys": self.skipped,
            "copied_keys": self.copied,
            "dtype_differences": self.dtype_differences,
        }


def _key_maps(sources: Sequence[TensorSource], names: Sequence[str]) -> list[dict[str, str]]:
    maps = []
    for source, name in zip(sources, names):
        mapping: dict[str, str] = {}
        for key in source.keys():
            canonical = canonical_key(key)
            if canonical in mapping:
                raise AlignmentError(
                    f"{name}: keys {mapping[canonical]!r} and {key!r} both normalise to {canonical!r}; "
                    "the checkpoint mixes wrapped and unwrapped names — re-save it from the unwrapped model"
                )
            mapping[canonical] = key
        maps.append(mapping)
    return maps


def _tied_target(key: str, meta: TensorMeta, index: int, maps, sources, configs) -> str | None:
    """The key ingredient ``index`` ties ``key`` to (e.g. ``lm_head.weight`` -> embeddings)."""
    candidates = [
        k for k in maps[index]
        if any(hint in k for hint in _EMBEDDING_HINTS) and sources[index].meta(maps[index][k]).shape == meta.shape
    ]
    config = configs[index] or {}
    for candidate in candidates:
        text_config = config.get("text_config") or {}
        if config.get("tie_word_embeddings", text_config.get("tie_word_embeddings")) is True:
            return candidate
        for other, mapping in enumerate(maps):  # another ingredient stores both: are they copies?
            if other != index and key in mapping and candidate in mapping:
                a, b = sources[other], (mapping[key], mapping[candidate])
                if a.meta(b[0]) == a.meta(b[1]) and _same_bytes(a, *b):
                    return candidate
    return None


def _same_bytes(source: TensorSource, key_a: str, key_b: str) -> bool:
    numel, step = source.meta(key_a).numel, 1 << 22
    for start in range(0, numel, step):
        stop = min(numel, start + step)
        if not (source.read(key_a, start, stop) == source.read(key_b, start, stop)).all():
            return False
    return True


def _model_type(config: dict | None) -> str | None:
    return (config or {}).get("model_type")


def align(
    sources: Sequence[TensorSource],
    names: Sequence[str],
    configs: Sequence[dict | None] | None = None,
    on_missing: str = "error",
    dtype: str | None = None,
    reference: int = 0,
) -> Alignment:
    """Align ``sources`` by key; raise :class:`AlignmentError` listing the first differences.

    ``on_missing`` decides about keys some ingredients lack (tied weights excepted):
    ``error`` refuses, ``skip`` leaves them out of the soup, ``first`` copies them from
    the first ingredient that has them. ``dtype`` forces the output float dtype.
    """
    if on_missing not in ON_MISSING:
        raise RecipeError(f"on_missing: must be one of {', '.join(ON_MISSING)}, got {on_missing!r}")
    configs = list(configs or [None] * len(sources))
    types = [_model_type(c) for c in configs]
    known = {t for t in types if t}
    if len(known) > 1:
        raise AlignmentError(
            "ingredients have different model types: "
            + ", ".join(f"{n}={t}" for n, t in zip(names, types))
            + "; a soup needs fine-tunes of one architecture",
            [{"ingredient": n, "model_type": t} for n, t in zip(names, types)],
        )
    maps = _key_maps(sources, names)
    order = list(maps[reference]) + [k for m in maps for k in m if k not in maps[reference]]
    order = list(dict.fromkeys(order))
    alignment = Alignment(list(names), [], model_types=types)
    shape_problems: list[dict[str, Any]] = []
    missing_problems: list[dict[str, Any]] = []
    for key in order:
        present = [i for i, m in enumerate(maps) if key in m]
        metas = {i: sources[i].meta(maps[i][key]) for i in present}
        sources_keys: list[str | None] = [maps[i].get(key) for i in range(len(maps))]
        absent = [i for i in range(len(maps)) if i not in metas]
        tied_here = []
        for i in list(absent):
            target = _tied_target(key, metas[present[0]], i, maps, sources, configs)
            if target is not None:
                alignment.tied.append({"ingredient": names[i], "key": key, "tied_to": target})
                sources_keys[i] = maps[i][target]
                metas[i] = sources[i].meta(maps[i][target])
                absent.remove(i)
                tied_here.append(i)
        if reference in tied_here:
            continue  # the reference ties this weight: its config recreates it on load
        shapes = {m.shape for m in metas.values()}
        if len(shapes) > 1:
            shape_problems.append({"key": key, "shapes": {names[i]: list(m.shape) for i, m in metas.items()}})
            continue
        if absent:
            for i in absent:
                alignment.missing.setdefault(names[i], []).append(key)
            if on_missing == "error":
                missing_problems.append({"key": key, "missing_in": [names[i] for i in absent]})
                continue
            if on_missing == "skip":
                alignment.skipped.append(key)
                continue
        kinds = {dtypes.is_float(m.dtype) for m in metas.values()}
        dtype_set = sorted({m.dtype for m in metas.values()})
        if len(dtype_set) > 1:
            alignment.dtype_differences.append({"key": key, "dtypes": {names[i]: m.dtype for i, m in metas.items()}})
        if len(kinds) > 1:
            shape_problems.append({"key": key, "dtypes": {names[i]: m.dtype for i, m in metas.items()}})
            continue
        first = min(metas)
        if kinds == {True} and not absent:
            out_dtype = dtype or (metas[reference].dtype if len(dtype_set) == 1 else dtypes.widest(dtype_set))
            alignment.tensors.append(AlignedTensor(key, metas[first].shape, out_dtype, sources_keys))
        else:
            copy_from = reference if reference in metas else first
            out_dtype = dtype if (dtype and kinds == {True}) else metas[copy_from].dtype
            alignment.tensors.append(
                AlignedTensor(key, metas[first].shape, out_dtype, sources_keys, action="copy", copy_from=copy_from)
            )
    if shape_problems:
        shown = shape_problems[:_MAX_LISTED]
        lines = [f"  {p['key']}: " + ", ".join(f"{n} {v}" for n, v in (p.get("shapes") or p["dtypes"]).items()) for p in shown]
        raise AlignmentError(
            f"{len(shape_problems)} tensor(s) differ in shape or kind between ingredients (first {len(shown)}):\n"
            + "\n".join(lines)
            + "\nThese checkpoints are not fine-tunes of one model; soup only models of identical architecture.",
            shape_problems,
        )
    if missing_problems:
        shown = missing_problems[:_MAX_LISTED]
        lines = [f"  {p['key']}: missing in {', '.join(p['missing_in'])}" for p in shown]
        raise AlignmentError(
            f"{len(missing_problems)} key(s) are not in every ingredient (first {len(shown)}):\n"
            + "\n".join(lines)
            + "\nSet on_missing: skip (leave them out) or first (copy from the first ingredient that has them); "
            "on the command line: --on-missing skip|first.",
            missing_problems,
        )
    if not alignment.tensors:
        raise AlignmentError("the ingredients have no tensors in common; check the references")
    return alignment
