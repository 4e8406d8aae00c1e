"""The all-models Learned-Soup (Wortsman et al. 2022; paper §2 and §3.2's "classical approach").

Every ingredient is held in memory and the soup ``sum_k w_k(alpha) theta_k`` is built
inside the autograd graph, so ``alpha``'s gradient flows through all K models. With
``hyperplane=True`` the weights are eq. 4's (HL-Soup), with ``False`` the softmax of the
original Learned-Soup. It takes the same steps, data order, optimizer and schedule as
:func:`~hf_soup.methods.learned.bcd.learn_block_coordinate`, so with ``model_batch = K`` both
give the same coefficients; it exists as that reference and as the benchmark's
baseline — the ``learned`` method never uses it (memory O(K x model)).

>>> result = learn_full_graph(layout, load, data, loss_fn, config, num_models=12)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..methods.learned.bcd import LearnConfig, LearnedCoefficients, LoadFn, LossFn, ReduceFn, reduce_step, float_params
from ..methods.learned.bcd import make_optimizer, make_scheduler
from ..methods.learned.blocks import BlockLayout
from ..methods.learned.coefficients import mixing_weights


def learn_full_graph(
    layout: BlockLayout,
    load: LoadFn,
    data: Iterator[Any],
    loss_fn: LossFn,
    config: LearnConfig,
    *,
    num_models: int,
    reduce: ReduceFn | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> LearnedCoefficients:
    """Learn the coefficients with one graph over all ``num_models`` loaded ingredients."""
    names, K, B = layout.params, num_models, layout.num_blocks
    block = torch.tensor(layout.block_of)
    stacks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k in range(K):
            params = float_params(load(k), names)
            for name in names:
                if k == 0:
                    stacks[name] = torch.empty((K, *params[name].shape), dtype=torch.float32,
                                               device=params[name].device)
                stacks[name][k] = params[name]
            del params
    device = next(iter(stacks.values())).device
    alpha = torch.zeros(K, B, dtype=torch.float32, device=device, requires_grad=True)
    optimizer = make_optimizer([alpha], config)
    total = config.total_steps(K)
    scheduler = make_scheduler(optimizer, config, total)
    losses: list[float] = []
    for _ in range(total):
        weights = mixing_weights(alpha, hyperplane=config.hyperplane)
        soup = {}
        for i, name in enumerate(names):
            w = weights[:, int(block[i])]
            soup[name] = torch.tensordot(w, stacks[name], dims=1)  # sum_k w_k theta_k, in the graph
        loss, count = loss_fn(soup, next(data))
        if loss is None:
            loss, grad = torch.zeros((), device=device), torch.zeros_like(alpha)
        else:
            (grad,) = torch.autograd.grad(loss, [alpha])
        mean_loss, grad = reduce_step(reduce, loss, count, grad)
        optimizer.zero_grad(set_to_none=True)
        alpha.grad = grad
        optimizer.step()
        scheduler.step()
        losses.append(float(mean_loss))
        if on_step is not None:
            on_step(len(losses), losses[-1])
    raw = alpha.detach()
    return LearnedCoefficients(raw.cpu().numpy().astype(np.float64),
                               mixing_weights(raw.double(), hyperplane=config.hyperplane).cpu().numpy(),
                               config.hyperplane, losses, [list(range(K))])
