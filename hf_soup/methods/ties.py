"""TIES-Merging (Yadav et al., 2023): trim each task vector to its largest entries, elect a sign per parameter, and
average the task vectors that agree with it.
"""

from __future__ import annotations

from .task_vectors import TaskVectorMethod, TaskVectorParams


class TiesParams(TaskVectorParams):
    """TIES normalises by the weights of the agreeing ingredients by default."""

    normalize: bool = True


class TiesSoup(TaskVectorMethod):
    """Magnitude top-``density`` per task vector, sign election by summed mass, disjoint mean."""

    name = "ties"
    paper = "https://arxiv.org/abs/2306.01708"
    paper_title = "TIES-Merging: Resolving Interference When Merging Models (Yadav et al., NeurIPS 2023)"
    Params = TiesParams
    sparsification = "magnitude"
    consensus = True
