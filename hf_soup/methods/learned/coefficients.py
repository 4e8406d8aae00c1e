"""Mixing coefficients: the hyperplane (MEHL-Soup, eq. 3-5) and the simplex (Learned-Soup, eq. 2).

Both are stored as one raw vector per ingredient with one entry per block, all zero at
the start (the uniform soup). What a raw vector means:

* hyperplane: ``soup = mean + sum_k alpha_k (theta_k - mean)``; the weight of ingredient
  k is ``1/K + alpha_k - mean(alpha)`` (eq. 4), so weights sum to 1 per block and may
  leave [0, 1] (extrapolation);
* simplex: ``soup = sum_k softmax(alpha)_k theta_k``, the original Learned-Soup.

For block-coordinate descent the soup is written through the loaded ingredients only:
``soup = mean + rho * (rest) + sum_{k in batch} c_k (theta_k - mean)`` where ``rest`` is
fixed during an outer iteration. :func:`batch_combination` returns ``(c, rho)`` as
differentiable functions of the batch's raw vectors (``rho`` is ``None`` on the
hyperplane, where the rest does not move).

>>> import torch
>>> alpha = torch.zeros(3, 2)
>>> mixing_weights(alpha, hyperplane=True)[:, 0]
tensor([0.3333, 0.3333, 0.3333])
"""

from __future__ import annotations

from typing import Sequence

import torch


def mixing_weights(alpha: torch.Tensor, *, hyperplane: bool) -> torch.Tensor:
    """Per-block weights ``(K, B)`` of the ingredients; each column sums to 1."""
    if hyperplane:
        return 1.0 / alpha.shape[0] + alpha - alpha.mean(dim=0, keepdim=True)
    return torch.softmax(alpha, dim=0)


def stack_for_batch(rows: Sequence[torch.Tensor], batch: Sequence[int]) -> torch.Tensor:
    """``(K, B)`` stack of the raw vectors; rows outside ``batch`` are detached (held fixed)."""
    chosen = set(batch)
    return torch.stack([row if k in chosen else row.detach() for k, row in enumerate(rows)])


def batch_combination(rows: Sequence[torch.Tensor], batch: Sequence[int], *, hyperplane: bool,
                      lse_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(c, rho)``: coefficients ``(b, B)`` of the batch's differences and the rest's scale ``(B,)``.

    ``lse_start`` is the per-block log-normaliser of the simplex weights when the outer
    iteration started (see :func:`log_normaliser`); ``rho`` is ``exp(lse_start - lse)``,
    the factor by which every ingredient outside the batch has had its weight scaled.
    """
    if hyperplane:
        return torch.stack([rows[k] for k in batch]), None
    stacked = stack_for_batch(rows, batch)
    lse = torch.logsumexp(stacked, dim=0)
    c = torch.exp(stacked[list(batch)] - lse)
    rho = None if lse_start is None else torch.exp(lse_start - lse)
    return c, rho


def log_normaliser(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-block ``logsumexp`` of the raw vectors (simplex only), detached."""
    return torch.logsumexp(torch.stack([r.detach() for r in rows]), dim=0)
