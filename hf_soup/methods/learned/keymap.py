"""Map blocks of in-memory parameters onto checkpoint keys.

The coefficients are learned on the task model's parameters (in-memory names); the
merge plan is written per checkpoint key. transformers 5 converts between the two on
load and save (renames, and for some models concatenations, splits, permutations — all
linear), so a probe state dict where every element holds its parameter's block number
is reverted with transformers' own ``revert_weight_conversion``: each checkpoint tensor
then shows which blocks it is made of. A checkpoint tensor made of several blocks (a
split on load) makes those blocks one, so every checkpoint tensor has exactly one
block and per-key weights reproduce the learned soup exactly.

>>> groups, key_block = checkpoint_blocks(model, layout)        # doctest: +SKIP
>>> layout = layout.merged(groups)                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .blocks import BlockLayout

#: Block number of checkpoint keys that hold no learned parameter (buffers).
NOT_LEARNED = -1


def _revert(model: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    if getattr(model, "config", None) is None:
        return state_dict
    from ...compat.transformers_keys import to_checkpoint_keys

    return to_checkpoint_keys(model, state_dict)


def checkpoint_blocks(model: Any, layout: BlockLayout) -> tuple[list[list[int]], dict[str, int]]:
    """``(groups, key_block)``: blocks that must be merged, and each checkpoint key's block.

    ``key_block`` uses the block numbers of ``layout.merged(groups)``; buffers map to
    :data:`NOT_LEARNED`. Tied parameters (one tensor under two names) share a block.
    """
    import torch

    param_block = {id(p): layout.block_of[i] for i, (_, p) in enumerate(_named(model, layout))}
    probe = {
        name: torch.full(tuple(t.shape), float(param_block.get(id(t), NOT_LEARNED)), dtype=torch.float32)
        for name, t in model.state_dict(keep_vars=True).items()
    }
    reverted = _revert(model, probe)
    del probe
    groups: list[list[int]] = []
    raw: dict[str, list[int]] = {}
    for key, tensor in reverted.items():
        blocks = sorted({int(v) for v in torch.unique(tensor).tolist()})
        raw[key] = blocks
        learned = [b for b in blocks if b != NOT_LEARNED]
        if len(learned) > 1:
            groups.append(learned)
    merged = layout.merged(groups)
    remap = {b: merged.block_of[layout.block_of.index(b)] for b in set(layout.block_of)}
    key_block = {}
    for key, blocks in raw.items():
        learned = [b for b in blocks if b != NOT_LEARNED]
        key_block[key] = remap[learned[0]] if learned else NOT_LEARNED
    return groups, key_block


def _named(model: Any, layout: BlockLayout) -> list[tuple[str, Any]]:
    params = dict(model.named_parameters())
    return [(name, params[name]) for name in layout.params]
