"""MEHL-Soup(+) training: block-coordinate descent with one graph on the combined model.

Algorithm 1 of Li et al., with eq. 6 for the gradient: the soup's parameters are leaf
tensors, one forward/backward pass of the task model on them gives ``g = dL/dtheta``,
and the gradient of coefficient ``alpha_k`` of block ``l`` is ``<g_l, theta_k,l - mean_l>``
— the model graph never sees the ingredients. Memory at any time: the mean, the soup,
its gradient and the differences of the ``b`` loaded ingredients (plus, for the simplex
variant, the fixed rest of the soup); never all K ingredients (eq. 7-8).

The soup is updated in place by ``sum_k (alpha_k,new - alpha_k,old) (theta_k - mean)``
after every step, which is Algorithm 1's lines 6, 9 and 17 without storing
``theta_fix`` separately. Coefficients of ingredients outside the loaded batch get no
gradient (``grad = None``), so the optimizer leaves them and their state untouched
(eq. 7); the optimizer state of a coefficient persists across outer iterations.

>>> config = LearnConfig(model_batch=3, outer_epochs=1, inner_steps=50)              # doctest: +SKIP
>>> result = learn_block_coordinate(layout, load, data_stream(batches), loss_fn, config,
...                                 num_models=12)                                 # doctest: +SKIP
>>> result.weights.shape          # (K, blocks); every column sums to 1             # doctest: +SKIP
(12, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .blocks import BlockLayout
from .coefficients import batch_combination, log_normaliser, mixing_weights
from .schedule import lr_lambda, model_batches

#: ``loss_fn(params, batch) -> (mean loss, number of examples or scored tokens)``;
#: ``(None, 0)`` when this process has no rows of the batch.
LossFn = Callable[[Mapping[str, torch.Tensor], Any], "tuple[torch.Tensor, int | float]"]
#: ``load(k) -> {parameter name: tensor}`` in the task model's in-memory key space.
LoadFn = Callable[[int], Mapping[str, torch.Tensor]]
#: ``read(k, name) -> tensor``: ingredient k's parameter ``name`` alone, as ``load(k)`` gives it (streamed differences).
ReadFn = Callable[[int, str], torch.Tensor]
#: Sums a float tensor over processes (identity in a single process).
ReduceFn = Callable[[torch.Tensor], torch.Tensor]

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class LearnConfig:
    """Hyperparameters of the coefficient training (see ``LearnedParams`` for the recipe keys)."""

    model_batch: int
    outer_epochs: int = 1
    inner_steps: int = 1
    optimizer: str = "adamw"
    lr: float = 0.05
    weight_decay: float = 0.0
    momentum: float = 0.0
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.1
    seed: int = 0
    hyperplane: bool = True

    def total_steps(self, num_models: int) -> int:
        return self.outer_epochs * math.ceil(num_models / self.model_batch) * self.inner_steps


@dataclass
class LearnedCoefficients:
    """Result of a training run: raw coefficients and mixing weights, both ``(K, blocks)``."""

    raw: np.ndarray
    weights: np.ndarray
    hyperplane: bool
    losses: list[float] = field(default_factory=list)
    model_batches: list[list[int]] = field(default_factory=list)
    soup: dict[str, Any] | None = None

    @property
    def steps(self) -> int:
        return len(self.losses)

    @classmethod
    def from_raw(cls, raw: torch.Tensor, hyperplane: bool, losses: list[float], batches: list[list[int]],
                 soup: dict[str, Any] | None = None) -> "LearnedCoefficients":
        """The result for trained coefficients ``raw`` ``(K, blocks)``: their mixing weights, in float64."""
        weights = mixing_weights(raw.detach().double(), hyperplane=hyperplane).cpu().numpy()
        return cls(raw.detach().cpu().numpy().astype(np.float64), weights, hyperplane, losses, batches, soup)


def make_optimizer(params: list[torch.Tensor], config: LearnConfig) -> torch.optim.Optimizer:
    """``adamw`` or ``sgd`` over the coefficient tensors."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


def make_scheduler(optimizer: torch.optim.Optimizer, config: LearnConfig, total_steps: int):
    warmup = int(round(config.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.lr_schedule, total_steps, warmup))


def float_params(params: Mapping[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors as float32 (no copy when they already are)."""
    return {n: params[n].detach().to(torch.float32) for n in names}


def ingredient_mean(load: LoadFn, names: list[str], num_models: int) -> dict[str, torch.Tensor]:
    """``mean = (1/K) sum_k theta_k``, streaming the ingredients one at a time (Alg. 1 line 1)."""
    mean: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k in range(num_models):
            params = float_params(load(k), names)
            for name in names:
                if k == 0:
                    mean[name] = params[name].clone()
                else:
                    mean[name].add_(params[name])
            del params
        for tensor in mean.values():
            tensor.div_(num_models)
    return mean


@dataclass
class MicroBatches:
    """This process's micro-batches of one data batch, ``[(position, batch)]``, out of ``total``.

    A data batch cut into micro-batches of a fixed size, whatever the number of processes,
    and dealt to the processes round-robin; each micro-batch's loss and gradient terms are
    then summed in position order in float64 (:func:`fixed_order_sum`), so the step is the
    same, bit for bit, for any number of processes.
    """

    parts: list[tuple[int, Any]]
    total: int


def fixed_order_sum(reduce: ReduceFn | None, terms: torch.Tensor) -> torch.Tensor:
    """Sum the rows of ``terms`` (``(total, L)`` float64, each row filled by one process, zeros elsewhere)
    over processes, then row after row in position order: the same bits for any number of processes.

    Adding zeros is exact, so the reduction over processes gives every row its owner's value;
    the rows are then added in a fixed order.
    """
    if reduce is not None:
        terms = reduce(terms)
    total = terms[0].clone()
    for row in terms[1:]:
        total += row
    return total


def reduce_step(reduce: ReduceFn | None, loss: torch.Tensor, count: float, *parts: torch.Tensor) -> list[torch.Tensor]:
    """Example-weighted mean over processes of the loss and of each gradient part."""
    flat = torch.cat([loss.detach().reshape(1) * count, *(p.reshape(-1) * count for p in parts),
                      torch.tensor([float(count)], dtype=torch.float32, device=loss.device)])
    if reduce is not None:
        flat = reduce(flat)
    total = flat[-1]
    out, offset = [flat[0] / total], 1
    for part in parts:
        out.append((flat[offset:offset + part.numel()] / total).reshape(part.shape))
        offset += part.numel()
    return out


def learn_block_coordinate(
    layout: BlockLayout,
    load: LoadFn,
    data: Iterator[Any],
    loss_fn: LossFn,
    config: LearnConfig,
    *,
    num_models: int,
    reduce: ReduceFn | None = None,
    on_step: Callable[[int, float], None] | None = None,
    keep_soup: bool = False,
    on_start: Callable[[Mapping[str, torch.Tensor]], Any] | None = None,
    streamed: frozenset[str] | set[str] = frozenset(),
    read: ReadFn | None = None,
) -> LearnedCoefficients:
    """Learn per-(ingredient, block) coefficients with MEHL-Soup(+) (Algorithm 1).

    ``load(k)`` returns ingredient k's parameters (in-memory names of ``layout.params``);
    it is called K times for the mean and once per outer iteration for each loaded
    ingredient. ``data`` yields batches for ``loss_fn(params, batch)``, which runs the
    task model on ``params`` (e.g. with ``torch.func.functional_call``). ``reduce`` sums a
    tensor over processes; the gradients are then example-weighted means over ranks.
    ``keep_soup`` returns the tracked soup too (``result.soup``); ``on_start(soup)`` sees
    the starting soup (the uniform soup, alpha = 0) before the first step. The differences
    of the parameters in ``streamed`` are not kept: each use forms them again from
    ``read(k, name)`` with the same operations (:class:`Differences`), so the result is the same.
    """
    names, K, B = layout.params, num_models, layout.num_blocks
    block = layout.block_of
    mean = ingredient_mean(load, names, K)
    soup = {n: t.clone() for n, t in mean.items()}  # alpha = 0: the uniform soup (Alg. 1 line 2)
    if on_start is not None:
        on_start(soup)
    rows = [torch.zeros(B, dtype=torch.float32, device=_device(mean), requires_grad=True) for _ in range(K)]
    optimizer = make_optimizer(rows, config)
    scheduler = make_scheduler(optimizer, config, config.total_steps(K))
    schedule = model_batches(K, config.model_batch, outer_epochs=config.outer_epochs, seed=config.seed)
    losses: list[float] = []
    for batch in schedule:
        diffs = _load_differences(load, batch, names, mean, streamed, read)  # Alg. 1 line 5
        with torch.no_grad():
            lse_start = None if config.hyperplane or len(batch) == K else log_normaliser(rows)
            current, _ = batch_combination(rows, batch, hyperplane=config.hyperplane, lse_start=lse_start)
            rest = None
            if lse_start is not None:  # simplex: the part of the soup outside the batch, rescaled by rho
                rest = {n: soup[n].reshape(-1) - mean[n].reshape(-1) - _combine(diffs[n], current[:, block[i]])
                        for i, n in enumerate(names)}
            rho_current = torch.ones(B, device=current.device)
        projected = partial(_projected, loss_fn, soup=soup, names=names, diffs=diffs, rest=rest, block=block,
                            size=len(batch), blocks=B, device=current.device)
        for _ in range(config.inner_steps):
            item = next(data)
            if isinstance(item, MicroBatches):
                mean_loss, g_batch, g_rest = _micro_step(reduce, item, projected, len(batch), B, current.device)
            else:
                loss, count, g_batch, g_rest = projected(item)
                with torch.no_grad():
                    mean_loss, g_batch, g_rest = reduce_step(reduce, loss, count, g_batch, g_rest)
            optimizer.zero_grad(set_to_none=True)  # rows outside the batch keep grad None: unchanged (eq. 7)
            coefficients, rho = batch_combination(rows, batch, hyperplane=config.hyperplane, lse_start=lse_start)
            surrogate = (coefficients * g_batch).sum()
            if rho is not None:
                surrogate = surrogate + (rho * g_rest).sum()
            surrogate.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # eq. 8: move the soup by the change of the batch's coefficients
                new, new_rho = batch_combination(rows, batch, hyperplane=config.hyperplane, lse_start=lse_start)
                delta = new - current
                for i, name in enumerate(names):
                    soup[name].reshape(-1).add_(_combine(diffs[name], delta[:, block[i]]))
                    if rest is not None:
                        soup[name].reshape(-1).add_(rest[name], alpha=float(new_rho[block[i]] - rho_current[block[i]]))
                current = new
                if new_rho is not None:
                    rho_current = new_rho
            losses.append(float(mean_loss))
            if on_step is not None:
                on_step(len(losses), losses[-1])
        del diffs, rest, projected
    return LearnedCoefficients.from_raw(torch.stack([r.detach() for r in rows]), config.hyperplane, losses, schedule,
                                        soup if keep_soup else None)


def _projected(loss_fn: LossFn, item: Any, *, soup: Mapping[str, torch.Tensor], names: list[str],
               diffs: Mapping[str, torch.Tensor], rest: Mapping[str, torch.Tensor] | None, block: list[int],
               size: int, blocks: int, device: torch.device) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Mean loss, row count and the loss gradient projected on the batch's coefficients (eq. 6) of one data batch."""
    leaves = {n: soup[n].detach().requires_grad_(True) for n in names}
    loss, count = loss_fn(leaves, item)
    if loss is None:  # this rank got no rows of the global batch
        loss, grads = torch.zeros((), device=device), [None] * len(names)
    else:
        grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    with torch.no_grad():
        g_batch = torch.zeros(size, blocks, device=device)
        g_rest = torch.zeros(blocks, device=device)
        for i, (name, grad) in enumerate(zip(names, grads)):
            if grad is None:
                continue
            flat = grad.reshape(-1)
            g_batch[:, block[i]] += diffs[name] @ flat  # eq. 6, per block
            if rest is not None:
                g_rest[block[i]] += torch.dot(rest[name], flat)
    return loss.detach(), count, g_batch, g_rest


def _micro_step(reduce: ReduceFn | None, item: MicroBatches, projected: Callable[[Any], Any], size: int,
                blocks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Example-weighted mean loss and projected gradients of a data batch, from its micro-batches in fixed order."""
    width = 1 + size * blocks + blocks + 1
    terms = torch.zeros(item.total, width, dtype=torch.float64, device=device)
    for position, micro in item.parts:
        loss, count, g_batch, g_rest = projected(micro)
        if count:
            terms[position] = torch.cat([loss.double().reshape(1), g_batch.double().reshape(-1), g_rest.double(),
                                         torch.ones(1, dtype=torch.float64, device=device)]) * float(count)
    total = fixed_order_sum(reduce, terms)
    total = total / total[-1]
    g_batch = total[1:1 + size * blocks].reshape(size, blocks).to(torch.float32)
    return total[0], g_batch, total[1 + size * blocks:-1].to(torch.float32)


def _device(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(tensors.values())).device


def _combine(diffs: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """``sum_j coefficients[j] * diffs[j]`` for a ``(b, numel)`` stack -> ``(numel,)``."""
    return coefficients @ diffs


class Differences(Mapping[str, torch.Tensor]):
    """``theta_k - mean`` of a model batch's ingredients, one ``(b, numel)`` float32 stack per parameter.

    Resident stacks are kept; a streamed one is formed again from ``read(k, name)`` each time
    it is looked up, with the operations that formed the resident ones, hence the same values.
    """

    def __init__(self, resident: dict[str, torch.Tensor], streamed: list[str], batch: list[int],
                 mean: Mapping[str, torch.Tensor], read: ReadFn | None):
        self.resident, self.streamed, self.batch, self.mean, self.read = resident, streamed, batch, mean, read

    def __getitem__(self, name: str) -> torch.Tensor:
        stack = self.resident.get(name)
        if stack is not None:
            return stack
        if name not in self.streamed or self.read is None:
            raise KeyError(name)
        mean = self.mean[name]
        stack = torch.empty(len(self.batch), mean.numel(), dtype=torch.float32, device=mean.device)
        with torch.no_grad():
            for j, k in enumerate(self.batch):
                stack[j] = self.read(k, name).detach().reshape(-1).to(torch.float32) - mean.reshape(-1)
        return stack

    def __iter__(self) -> Iterator[str]:
        yield from self.resident
        yield from self.streamed

    def __len__(self) -> int:
        return len(self.resident) + len(self.streamed)


def _load_differences(load: LoadFn, batch: list[int], names: list[str], mean: Mapping[str, torch.Tensor],
                      streamed: frozenset[str] | set[str] = frozenset(), read: ReadFn | None = None) -> Differences:
    """``theta_k - mean`` of the batch's ingredients: resident stacks, except the ``streamed`` parameters'."""
    kept = [n for n in names if n not in streamed]
    diffs = {n: torch.empty(len(batch), mean[n].numel(), dtype=torch.float32, device=mean[n].device) for n in kept}
    with torch.no_grad():
        for j, k in enumerate(batch if kept else ()):
            params = load(k)
            for name in kept:
                diffs[name][j] = params[name].detach().reshape(-1).to(torch.float32) - mean[name].reshape(-1)
            del params
    return Differences(diffs, [n for n in names if n in streamed], batch, mean, read)
