"""DELLA-Merging with TIES sign election (Deep et al., 2024): MagPrune, rescale, elect a sign, average the agreeing
task vectors.
"""

from __future__ import annotations

from .della_linear import DellaLinearSoup, DellaParams


class DellaTiesParams(DellaParams):
    """DELLA normalises by the weights of the agreeing ingredients by default."""

    normalize: bool = True


class DellaSoup(DellaLinearSoup):
    """MagPrune masks (seeded), l1 rescale, sign election by summed mass, disjoint mean."""

    name = "della"
    Params = DellaTiesParams
    consensus = True
