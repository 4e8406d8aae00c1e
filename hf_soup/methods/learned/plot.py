"""The model card's coefficient figure: the distribution of the learned mixing weights.

Like the paper's Fig. 1: a histogram of every (ingredient, block) weight, with the
uniform weight 1/K and the simplex bounds [0, 1] marked (hyperplane weights may leave
them); for layer-wise soups a heatmap of the weights (blocks x ingredients) is added.
Needs matplotlib; without it :func:`coefficient_plot_png` returns ``None``.

>>> png = coefficient_plot_png([[0.6, 0.2], [0.4, 0.8]], ["block 0", "block 1"], "MEHL-Soup+")  # doctest: +SKIP
>>> png[:4]                                                                                       # doctest: +SKIP
b'\\x89PNG'
"""

from __future__ import annotations

import io
import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger("hf_soup")

PLOT_FILE = "learned_coefficients.png"


def coefficient_plot_png(weights: Sequence[Sequence[float]], block_names: Sequence[str], title: str) -> bytes | None:
    """PNG bytes of the figure for ``weights`` ``(K, blocks)``; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the learned-coefficient plot is skipped (pip install matplotlib)")
        return None
    w = np.asarray(weights, dtype=np.float64)
    num_models, num_blocks = w.shape
    panels = 2 if num_blocks > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.hist(w.ravel(), bins=min(60, max(10, w.size // 4)), color="#4c72b0")
    ax.axvline(1.0 / num_models, color="#dd8452", linestyle="--", label=f"uniform 1/K = {1.0 / num_models:.3g}")
    for bound in (0.0, 1.0):
        ax.axvline(bound, color="grey", linewidth=0.8)
    ax.set_xlabel("mixing weight")
    ax.set_ylabel("count (ingredient x block)")
    ax.set_title(f"{title}: {num_models} ingredients, {num_blocks} block(s)")
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0][1]
        limit = max(abs(w - 1.0 / num_models).max(), 1e-12)
        image = ax.imshow((w - 1.0 / num_models).T, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit,
                          interpolation="nearest")
        ax.set_xlabel("ingredient")
        ax.set_ylabel("block")
        if num_blocks <= 30:
            ax.set_yticks(range(num_blocks), [_short(n) for n in block_names], fontsize=6)
        ax.set_title("weight - 1/K per block")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]
