"""Task arithmetic (Ilharco et al., 2023): the base model plus the weighted sum of the task vectors θ_k − θ_base."""

from __future__ import annotations

from . import settings
from .task_vectors import TaskVectorMethod


class TaskArithmeticSoup(TaskVectorMethod):
    """``θ_base + λ Σ_k w_k (θ_k − θ_base)``; ``normalize: true`` divides by ``Σ_k w_k``."""

    name = "task_arithmetic"
    paper = "https://arxiv.org/abs/2212.04089"
    paper_title = "Editing Models with Task Arithmetic (Ilharco et al., ICLR 2023)"

    def linear_weights(self, count: int, key: str | None = None) -> list[float]:
        """``λ w_k`` (divided by ``Σ_k w_k`` when ``normalize``): the soup is ``base + Σ_k λ w_k ΔW_k``."""
        weights = [float(w) for w in settings.per_ingredient(self.params.weights, count, key or "")]
        total = sum(weights[1:], weights[0])
        divisor = (1.0 if abs(total) < 1e-8 else total) if self.params.normalize else 1.0
        scale = float(settings.resolve(self.params.lambda_, key or ""))
        return [scale * w / divisor for w in weights]
