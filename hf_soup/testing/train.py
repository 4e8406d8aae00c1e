"""A few seeded AdamW steps on random minibatches: how the tests and benchmarks fine-tune tiny models.

>>> train_steps(model, {"pixel_values": pixels}, labels, steps=30, lr=3e-3, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping


def train_steps(model: Any, inputs: Mapping[str, Any], labels: Any, *, steps: int, lr: float, seed: int,
                batch: int = 64, weight_decay: float = 0.01) -> None:
    """Train ``model`` in place for ``steps`` minibatches drawn with replacement (seeded), then ``eval()`` it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (min(batch, len(labels)),), generator=generator)
        loss = model(**{k: v[idx] for k, v in inputs.items()}, labels=labels[idx]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
