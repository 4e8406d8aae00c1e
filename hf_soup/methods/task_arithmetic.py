"""Task arithmetic (Ilharco et al., 2023): the base model plus the weighted sum of the task vectors θ_k − θ_base."""

from __future__ import annotations

from .task_vectors import TaskVectorMethod


class TaskArithmeticSoup(TaskVectorMethod):
    """``θ_base + λ Σ_k w_k (θ_k − θ_base)``; ``normalize: true`` divides by ``Σ_k w_k``."""

    name = "task_arithmetic"
    paper = "https://arxiv.org/abs/2212.04089"
