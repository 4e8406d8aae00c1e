"""The all-models Learned-Soup (Wortsman et al. 2022; paper §2 and §3.2's "classical approach").

Every ingredient is held in memory and the soup ``sum_k w_k(alpha) theta_k`` is built
inside the autograd graph, so ``alpha``'s gradient flows through all K models. With
``hyperplane=True`` the weights are eq. 4's (HL-Soup), with ``False`` the softmax of the
original Learned-Soup. It is the benchmark's baseline (memory O(K x model)); the
``learned`` method never uses it.

An independent implementation, on purpose: ``tests/methods/test_learned.py`` checks
:func:`~hf_soup.methods.learned.bcd.learn_block_coordinate` against it (with
``model_batch = K`` both take the same steps and give the same coefficients). So it
computes the gradient its own way (autograd through the weighted sum, where ``bcd`` uses
eq. 6 and moves the soup in place by eq. 8) and shares with ``bcd`` only what the
comparison needs to be equal: ``LearnConfig``, the optimizer and schedule, the
example-weighted reduction over processes, the mixing weights and the result type.
Keep it that way: code that both would run is code the test cannot check.

>>> result = learn_full_graph(layout, load, data, loss_fn, config, num_models=12)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from ..methods.learned.bcd import LearnConfig, LearnedCoefficients, LoadFn, LossFn, ReduceFn, reduce_step, float_params
from ..methods.learned.bcd import make_optimizer, make_scheduler
from ..methods.learned.blocks import BlockLayout
from ..methods.learned.coefficients import mixing_weights


def learn_full_graph(layout: BlockLayout, load: LoadFn, data: Iterator[Any], loss_fn: LossFn, config: LearnConfig, *,
                     num_models: int, reduce: ReduceFn | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> LearnedCoefficients:
    """Learn the coefficients with one graph over all ``num_models`` loaded ingredients."""
    stacks = _stacked(load, layout.params, num_models)
    device = next(iter(stacks.values())).device
    alpha = torch.zeros(num_models, layout.num_blocks, dtype=torch.float32, device=device, requires_grad=True)
    optimizer = make_optimizer([alpha], config)
    total = config.total_steps(num_models)
    scheduler = make_scheduler(optimizer, config, total)
    losses: list[float] = []
    while len(losses) < total:
        loss, count = loss_fn(_soup(stacks, layout, mixing_weights(alpha, hyperplane=config.hyperplane)), next(data))
        grad = torch.zeros_like(alpha) if loss is None else torch.autograd.grad(loss, [alpha])[0]
        mean_loss, grad = reduce_step(reduce, torch.zeros((), device=device) if loss is None else loss, count, grad)
        optimizer.zero_grad(set_to_none=True)
        alpha.grad = grad
        optimizer.step()
        scheduler.step()
        losses.append(float(mean_loss))
        if on_step is not None:
            on_step(len(losses), losses[-1])
    return LearnedCoefficients.from_raw(alpha, config.hyperplane, losses, [list(range(num_models))])


def _stacked(load: LoadFn, names: list[str], num_models: int) -> dict[str, torch.Tensor]:
    """``{name: (K, *shape) float32}``: every ingredient's parameter ``name`` in one tensor."""
    stacks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k in range(num_models):
            for name, tensor in float_params(load(k), names).items():
                if name not in stacks:
                    stacks[name] = tensor.new_empty((num_models, *tensor.shape))
                stacks[name][k] = tensor
    return stacks


def _soup(stacks: dict[str, torch.Tensor], layout: BlockLayout, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sum_k w_k theta_k`` for every parameter, inside the graph (each parameter with its block's weights)."""
    return {name: torch.tensordot(weights[:, block], stacks[name], dims=1)
            for name, block in zip(layout.params, layout.block_of)}
