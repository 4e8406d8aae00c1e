"""DELLA-Merging (Deep et al., 2024): MagPrune drops task-vector entries at random with probabilities that fall
with their magnitude rank, then rescales.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from . import settings
from .settings import PerIngredient
from .task_vectors import TaskVectorMethod, TaskVectorParams


class DellaParams(TaskVectorParams):
    """``epsilon``: keep probabilities range over ``density ± epsilon`` (both within (0, 1))."""

    epsilon: PerIngredient = Field(0.15)
    rescale: bool = True


class DellaLinearSoup(TaskVectorMethod):
    """MagPrune masks (per row of a matrix, seeded), l1 rescale, weighted sum of task vectors."""

    name = "della_linear"
    paper = "https://arxiv.org/abs/2406.11617"
    paper_title = ("DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based "
                   "Sampling (Deep et al., 2024)")
    Params = DellaParams
    sparsification = "della"
    whole_tensor = True  # ranks within each row: whole tensors, no pre-pass
    needs_prepass = False

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


def _spread(setting: Any, count: int) -> list[Any]:
    return setting if settings.is_per_ingredient(setting) else [setting] * count
