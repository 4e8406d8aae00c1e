"""DARE-TIES (Yu et al., 2024): DARE's random drop and rescale, then TIES's sign election."""

from __future__ import annotations

from .dare_linear import DareParams
from .task_vectors import TaskVectorMethod


class DareTiesSoup(TaskVectorMethod):
    """Random Bernoulli(``density``) masks (seeded), l1 rescale, sign election by summed mass."""

    name = "dare_ties"
    paper = "https://arxiv.org/abs/2311.03099"
    paper_title = ("Language Models are Super Mario: Absorbing Abilities from Homologous Models as "
                   "a Free Lunch (Yu et al., ICML 2024)")
    Params = DareParams
    sparsification = "random"
    consensus = True
