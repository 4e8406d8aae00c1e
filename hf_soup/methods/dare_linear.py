"""DARE (Yu et al., 2024): drop each task-vector entry at random (keeping a ``density`` fraction), rescale, and add
the weighted sum to the base.
"""

from __future__ import annotations

from .task_vectors import TaskVectorMethod, TaskVectorParams


class DareParams(TaskVectorParams):
    """DARE rescales the kept entries (to the task vector's l1 norm) by default."""

    rescale: bool = True


class DareLinearSoup(TaskVectorMethod):
    """Random Bernoulli(``density``) masks, seeded per tensor and ingredient from the recipe's ``seed``."""

    name = "dare_linear"
    paper = "https://arxiv.org/abs/2311.03099"
    paper_title = ("Language Models are Super Mario: Absorbing Abilities from Homologous Models as "
                   "a Free Lunch (Yu et al., ICML 2024)")
    Params = DareParams
    sparsification = "random"
