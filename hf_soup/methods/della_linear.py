"""DELLA-Merging (Deep et al., 2024): MagPrune drops task-vector entries at random with probabilities that fall
with their magnitude rank, then rescales.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from . import settings, sparsify
from .base import ChunkInfo
from .della_rows import RowMask, rescale_sums, row_length
from .settings import PerIngredient
from .task_vectors import TaskVectorMethod, TaskVectorParams, _l1_factor


class DellaParams(TaskVectorParams):
    """``epsilon``: keep probabilities range over ``density ± epsilon`` (both within (0, 1))."""

    epsilon: PerIngredient = Field(0.15)
    rescale: bool = True


class DellaLinearSoup(TaskVectorMethod):
    """MagPrune masks (per row of a matrix, seeded), l1 rescale, weighted sum of task vectors.

    Streamed: the engine hands each merge call whole rows (:meth:`row_length`), whose masks
    :class:`~hf_soup.methods.della_rows.RowMask` decides as the whole tensor would; the l1
    rescale factors come from two pre-passes.
    """

    name = "della_linear"
    paper = "https://arxiv.org/abs/2406.11617"
    paper_title = ("DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based "
                   "Sampling (Deep et al., 2024)")
    Params = DellaParams
    sparsification = "della"

    def check_parameters(self, count: int | None) -> list[str]:
        problems = super().check_parameters(count)
        problems += settings.check(self.params.epsilon, "epsilon", count, lambda e: e >= 0, "epsilon must be >= 0")
        if problems:
            return problems
        n = count or 1
        for density_setting, epsilon_setting in zip(_spread(self.params.density, n), _spread(self.params.epsilon, n)):
            for density in settings.all_values(density_setting):
                for epsilon in settings.all_values(epsilon_setting):
                    if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
                        return [f"method.epsilon: density {density} ± epsilon {epsilon} leaves (0, 1); "
                                "choose epsilon < min(density, 1 - density)"]
        return []

    def _sparsify_args(self, key: str) -> dict[str, list[Any]]:
        return {"epsilon": [float(e) for e in settings.per_ingredient(self.params.epsilon, self.count, key)]}

    def row_length(self, shape: tuple[int, ...]) -> int:
        """MagPrune ranks within each row: merge calls get whole rows."""
        return row_length(shape)

    def prepare_tensor(self, info: ChunkInfo, read) -> None:
        """Each ingredient's :class:`~hf_soup.methods.della_rows.RowMask` of tensor ``info`` and its rescale factor."""
        _, densities, extras = self._tensor_settings(info.key, self.count)
        rules = [None if densities[k] >= 1 else
                 RowMask(info.shape, densities[k], extras["epsilon"][k], sparsify.rng_for(self.seed, info.key, k))
                 for k in range(self.count)]
        if self.params.rescale and any(rule is not None for rule in rules):
            for rule, sums in zip(rules, rescale_sums(rules, info.stop, read)):
                if rule is not None:
                    rule.factor = _l1_factor(*sums)
        self._masks[info.key] = rules

    def merge_whole(self, info: ChunkInfo, chunks) -> Any:
        """The same soup from the whole tensor at once (the reference the streamed merge equals)."""
        return self._merge_whole(info, chunks)


def _spread(setting: Any, count: int) -> list[Any]:
    return setting if settings.is_per_ingredient(setting) else [setting] * count
