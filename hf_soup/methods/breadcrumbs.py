"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop each task vector's largest outliers (``gamma``) and its
smallest entries, keeping a ``density`` fraction.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from . import settings
from .settings import PerIngredient
from .task_vectors import TaskVectorMethod, TaskVectorParams


class BreadcrumbsParams(TaskVectorParams):
    """``gamma``: the fraction of largest-magnitude entries removed, in [0, 1)."""

    gamma: PerIngredient = Field(0.01)


class BreadcrumbsSoup(TaskVectorMethod):
    """Keep the task-vector entries ranked (by magnitude) just below the top ``gamma`` fraction."""

    name = "breadcrumbs"
    paper = "https://arxiv.org/abs/2312.06795"
    paper_title = ("Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks (Davari & "
                   "Belilovsky, ECCV 2024)")
    Params = BreadcrumbsParams
    sparsification = "magnitude_outliers"

    def check_parameters(self, count: int | None) -> list[str]:
        return super().check_parameters(count) + settings.check(
            self.params.gamma, "gamma", count, lambda g: 0 <= g < 1, "gamma must be in [0, 1)")

    def _sparsify_args(self, key: str) -> dict[str, list[Any]]:
        return {"gamma": [float(g) for g in settings.per_ingredient(self.params.gamma, self.count, key)]}
