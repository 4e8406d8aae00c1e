"""Low-rank forms of a weighted sum of LoRA updates, without building the full ΔW.

``Σ_k w_k · L_k @ R_k = [w_1 L_1 | … | w_K L_K] @ [R_1; …; R_K]`` is exact with rank
``Σ r_k`` (:func:`concat`). :func:`truncate` gives its best rank-``k`` approximation
(Eckart–Young) through thin QR factorisations of the stacked factors and an SVD of a
``Σr × Σr`` core, so the cost is O((m + n)·(Σr)²), never O(m·n).

>>> import numpy as np
>>> left, right = concat([(np.eye(2, 1, dtype="f4"), np.ones((1, 3), "f4"))], [0.5])
>>> (left @ right).tolist()
[[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def concat(factors: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` with ``left @ right = Σ_k weights[k] · left_k @ right_k`` exactly."""
    left = np.concatenate([np.float32(w) * left_k for (left_k, _), w in zip(factors, weights)], axis=1)
    right = np.concatenate([r for _, r in factors], axis=0)
    return left.astype(np.float32), right.astype(np.float32)


def truncate(left: np.ndarray, right: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Best rank-``rank`` factors of ``left @ right``, the relative Frobenius error, and the singular values.

    The error is ``‖ΔW − ΔW_rank‖_F / ‖ΔW‖_F`` (0 for a zero update). The singular
    values are split evenly (``√s``) between the two factors.
    """
    q_left, r_left = np.linalg.qr(left.astype(np.float64))
    q_right, r_right = np.linalg.qr(right.T.astype(np.float64))
    u, s, vt = np.linalg.svd(r_left @ r_right.T)
    keep = max(1, min(rank, s.size))
    total = float(np.sqrt(np.sum(s**2)))
    error = float(np.sqrt(np.sum(s[keep:] ** 2)) / total) if total > 0 else 0.0
    root = np.sqrt(s[:keep])
    new_left = (q_left @ u[:, :keep]) * root
    new_right = (root[:, None] * vt[:keep]) @ q_right.T
    return new_left.astype(np.float32), new_right.astype(np.float32), error, s
