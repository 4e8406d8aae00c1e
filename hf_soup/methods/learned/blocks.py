"""Which parameters share a mixing coefficient.

MEHL-Soup has one block (one coefficient per ingredient); MEHL-Soup+ one block per
parameter tensor, or one per group of tensors named by regular expressions. A pattern
with capture groups makes one block per distinct capture, so ``r"layers\\.(\\d+)\\."``
gives one block per transformer layer::

    >>> layout = BlockLayout.build(["a.0.w", "a.1.w", "head.w"], layerwise=True,
    ...                            patterns=[r"a\\.(\\d+)\\."])
    >>> layout.block_of, layout.num_blocks
    ([0, 1, 2], 3)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ...errors import MethodParameterError

SINGLE_BLOCK = "all"


@dataclass(frozen=True)
class BlockLayout:
    """``block_of[i]`` is the block of parameter ``params[i]``; ``names[b]`` names block b."""

    params: list[str]
    block_of: list[int]
    names: list[str]

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    def members(self) -> list[list[str]]:
        """The parameter names of each block."""
        out: list[list[str]] = [[] for _ in self.names]
        for name, block in zip(self.params, self.block_of):
            out[block].append(name)
        return out

    @classmethod
    def build(cls, params: Sequence[str], *, layerwise: bool, patterns: Sequence[str] | None = None) -> "BlockLayout":
        """One block (``layerwise=False``), else per pattern match (first match wins) or per tensor.

        A parameter that matches no pattern gets a block of its own.
        """
        params = list(params)
        if not layerwise:
            return cls(params, [0] * len(params), [SINGLE_BLOCK])
        compiled = compile_patterns(patterns or [])
        index: dict[str, int] = {}
        block_of = []
        for name in params:
            label = name
            for source, regex in compiled:
                match = regex.search(name)
                if match:
                    label = source if not match.groups() else f"{source}[{','.join(str(g) for g in match.groups())}]"
                    break
            block_of.append(index.setdefault(label, len(index)))
        return cls(params, block_of, list(index))

    def merged(self, groups: Sequence[Sequence[int]]) -> "BlockLayout":
        """A coarser layout where each group of block indices becomes one block."""
        parent = list(range(self.num_blocks))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for group in groups:
            group = list(group)
            for other in group[1:]:
                parent[find(other)] = find(group[0])
        roots: dict[int, int] = {}
        names: list[str] = []
        for b in range(self.num_blocks):
            root = find(b)
            if root not in roots:
                roots[root] = len(names)
                names.append(self.names[b])
            else:
                names[roots[root]] += "+" + self.names[b]
        return BlockLayout(self.params, [roots[find(b)] for b in self.block_of], names)


def compile_patterns(patterns: Sequence[str]) -> list[tuple[str, re.Pattern[str]]]:
    """Compile block patterns; raise ``MethodParameterError`` naming a bad one."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append((pattern, re.compile(pattern)))
        except re.error as error:
            raise MethodParameterError(
                f"method.blocks: {pattern!r} is not a valid regular expression ({error}); "
                "write e.g. 'layers\\.(\\d+)\\.' for one block per layer"
            ) from None
    return compiled
