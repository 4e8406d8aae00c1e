"""Model Breadcrumbs with TIES sign election: outlier and small-entry removal, then a disjoint mean of the agreeing
task vectors.
"""

from __future__ import annotations

from .breadcrumbs import BreadcrumbsSoup


class BreadcrumbsTiesSoup(BreadcrumbsSoup):
    """Breadcrumbs masks, sign election by summed mass (``normalize`` off by default, as in MergeKit)."""

    name = "breadcrumbs_ties"
    consensus = True
