"""AME's default optimizer arithmetic: every step a fixed sequence of correctly rounded float64 operations.

Each optimizer's update is written out as the pseudo-code of its torch documentation,
one elementary operation per line (:mod:`~hf_soup.methods.ame.elementary`: add, subtract,
multiply, divide, square root, and exact selections), in float64, in the same order on
every device. Scalars (bias corrections, β^t, NAdam's μ products, ASGD's η) are
computed in Python floats on the host, the same for every device. Because each operation is
correctly rounded, the host (numpy) and a GPU (torch) compute the same float64 values,
for any block size, thread count or process count; the engine then rounds w once to the
output dtype. torch's own implementations (``fused: true`` / ``foreach: true``, or its
single-tensor loop) use ``lerp``, ``addcmul`` and ``addcdiv``, whose kernels may fuse a
multiply and an add on one device and not on another.

The updates (g: the pseudogradient, negated first under ``maximize``; λ: weight_decay;
γ: the step's rate; t: the step number from 1):

* SGD: g ← g + λw; b ← g (t = 1), else b ← μb + (1 − τ)g; g ← g + μb (Nesterov) or b; w ← w − γg.
* Adam / AdamW: g ← g + λw (Adam), or w ← w·(1 − γλ) (AdamW / ``decoupled_weight_decay``);
  m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²; m̂ ← m / (1 − β₁ᵗ); v̂ ← v / (1 − β₂ᵗ)
  (AMSGrad: v_max ← max(v_max, v), v̂ ← v_max / (1 − β₂ᵗ)); w ← w − γ·(m̂ / (√v̂ + ε)).
* Adagrad: g ← g + λw; s ← s + g²; w ← w − γ/(1 + (t − 1)η) · (g / (√s + ε)).
* RMSprop: g ← g + λw; v ← αv + (1 − α)g²; ṽ ← v, or v − ḡ² with ḡ ← αḡ + (1 − α)g (centered);
  b ← μb + g / (√ṽ + ε) and w ← w − γb (momentum), else w ← w − γ·(g / (√ṽ + ε)).
* Adadelta: g ← g + λw; v ← ρv + (1 − ρ)g²; Δ ← √(u + ε) / √(v + ε) · g; u ← ρu + (1 − ρ)Δ²; w ← w − γΔ.
* Adamax: g ← g + λw; m ← β₁m + (1 − β₁)g; u ← max(β₂u, |g| + ε); w ← w − γ·(m / ((1 − β₁ᵗ)·u)).
* NAdam: weight decay as Adam; m, v as Adam; m̂ ← m·μₜ₊₁/(1 − Πᵢ₌₁ᵗ⁺¹μᵢ) + g·(1 − μₜ)/(1 − Πᵢ₌₁ᵗμᵢ);
  v̂ ← v / (1 − β₂ᵗ); w ← w − γ·(m̂ / (√v̂ + ε)), μₜ = β₁(1 − ½·0.96^(tψ)).
* RAdam: weight decay as Adam; m, v as Adam; m̂ ← m / (1 − β₁ᵗ); ρₜ = ρ∞ − 2tβ₂ᵗ/(1 − β₂ᵗ);
  w ← w − (m̂ / (√v + ε))·(γ rₜ √(1 − β₂ᵗ)) when ρₜ > 5, else w ← w − γm̂.
* ASGD: g ← g + λw; w ← w·(1 − λ_d η) − ηg, with η = the first step's rate, then
  γ / (1 + λ_d γ t)^α after step t (its averaged iterate ``ax`` is not AME's result).
* Rprop: p = g·g_prev; s ← clamp(s·η₊ where p > 0, s·η₋ where p < 0, s elsewhere);
  g ← 0 where p < 0; w ← w − s where g > 0, w + s where g < 0; g_prev ← g; s starts at
  the first step's rate.

>>> import numpy as np
>>> from hf_soup.methods.ame.elementary import NumpyOps
>>> w = np.zeros(2)
>>> step = PortableOptimizer("sgd", {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
...                                  "nesterov": False, "maximize": False}, NumpyOps(), 2)
>>> step.step(w, np.ones(2), 0.5); step.step(w, np.ones(2), 0.1); w    # g = 1 twice
array([-0.69, -0.69])
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from .elementary import NumpyOps, TorchOps

STEPS: dict[str, Callable[["PortableOptimizer", Any, Any, float], None]] = {}


def _optimizer(*names: str):
    def register(function):
        for name in names:
            STEPS[name] = function
        return function
    return register


class PortableOptimizer:
    """One block of ``count`` float64 elements stepped by optimizer ``name`` (its torch group).

    ``step(w, g, lr)`` updates ``w`` in place; ``g`` (the pseudogradient) is used as scratch.
    State and scratch arrays are taken from ``buffers`` (a name -> array mapping reused from
    one block to the next; missing ones are allocated) and reset here.
    """

    def __init__(self, name: str, group: Mapping[str, Any], ops: NumpyOps | TorchOps, count: int,
                 buffers: dict[str, Any] | None = None):
        key = name.lower()
        if key not in STEPS:
            raise ValueError(f"no portable step for optimizer {name!r}; choose one of {', '.join(sorted(STEPS))}")
        self.name, self.group, self.ops, self.count = key, dict(group), ops, count
        self.buffers = {} if buffers is None else buffers
        self.t = 0
        self.scalars: dict[str, float] = {}
        self._views: dict[str, Any] = {}  # this block's arrays, each filled once when first asked for
        self._step = STEPS[key]

    def array(self, name: str, fill: float | None = None) -> Any:
        """The block-sized float64 array ``name`` (set to ``fill`` the first time this block asks)."""
        view = self._views.get(name)
        if view is not None:
            return view
        array = self.buffers.get(name)
        if array is None or len(array) < self.count:
            array = self.ops.empty(self.count)
            self.buffers[name] = array
        view = self._views[name] = array[:self.count]
        if fill is not None:
            self.ops.fill(view, fill)
        return view

    def mask(self, name: str) -> Any:
        array = self.buffers.get(name)
        if array is None or len(array) < self.count:
            array = self.ops.empty_mask(self.count)
            self.buffers[name] = array
        return array[:self.count]

    def step(self, w: Any, g: Any, lr: float) -> None:
        """One step at rate ``lr``: ``w`` updated in place (``g`` is overwritten)."""
        self.t += 1
        if self.group.get("maximize"):
            self.ops.neg(g, g)
        self._step(self, w, g, lr)

    # -- pieces several optimizers share ----------------------------------------------------

    def l2(self, w: Any, g: Any) -> None:
        """g ← g + λw (coupled weight decay)."""
        decay = self.group.get("weight_decay", 0.0)
        if decay:
            tmp = self.array("tmp")
            self.ops.add(g, self.ops.mul(w, decay, tmp), g)

    def weight_decay(self, w: Any, g: Any, lr: float) -> None:
        """Adam-family weight decay: decoupled (w ← w·(1 − γλ)) or coupled (g ← g + λw)."""
        decay = self.group.get("weight_decay", 0.0)
        if decay and self.group.get("decoupled_weight_decay"):
            self.ops.mul(w, 1.0 - lr * decay, w)
        else:
            self.l2(w, g)

    def average(self, state: Any, value: Any, beta: float, square: bool = False) -> None:
        """state ← β·state + (1 − β)·value (or value²)."""
        ops, tmp = self.ops, self.array("tmp")
        ops.mul(state, beta, state)
        if square:
            ops.mul(ops.mul(value, value, tmp), 1.0 - beta, tmp)
        else:
            ops.mul(value, 1.0 - beta, tmp)
        ops.add(state, tmp, state)

    def descend(self, w: Any, direction: Any, rate: float) -> None:
        """w ← w − rate·direction (``direction`` is overwritten)."""
        self.ops.sub(w, self.ops.mul(direction, rate, direction), w)


@_optimizer("sgd")
def _sgd(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    self.l2(w, g)
    momentum = group.get("momentum", 0.0)
    if momentum:
        buf = self.array("momentum_buffer")
        if self.t == 1:
            ops.copy(buf, g)
        else:
            tmp = self.array("tmp")
            ops.mul(buf, momentum, buf)
            ops.add(buf, ops.mul(g, 1.0 - group.get("dampening", 0.0), tmp), buf)
        if group.get("nesterov"):
            tmp = self.array("tmp")
            ops.add(g, ops.mul(buf, momentum, tmp), g)
        else:
            ops.copy(g, buf)
    self.descend(w, g, lr)


def _moments(self: PortableOptimizer, g: Any) -> tuple[Any, Any]:
    beta1, beta2 = self.group["betas"]
    m, v = self.array("exp_avg", 0.0), self.array("exp_avg_sq", 0.0)
    self.average(m, g, beta1)
    self.average(v, g, beta2, square=True)
    return m, v


@_optimizer("adam", "adamw")
def _adam(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    beta1, beta2 = group["betas"]
    self.weight_decay(w, g, lr)
    m, v = _moments(self, g)
    denom = self.array("denom")
    if group.get("amsgrad"):
        v = ops.maximum(self.array("max_exp_avg_sq", 0.0), v, self.array("max_exp_avg_sq"))
    ops.div(v, 1.0 - beta2 ** self.t, denom)               # v̂
    ops.add(ops.sqrt(denom, denom), group["eps"], denom)   # √v̂ + ε
    ops.div(m, 1.0 - beta1 ** self.t, g)                   # m̂ (g is free now)
    self.descend(w, ops.div(g, denom, g), lr)


@_optimizer("adagrad")
def _adagrad(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    self.l2(w, g)
    total = self.array("sum", group["initial_accumulator_value"])
    tmp = self.array("tmp")
    ops.add(total, ops.mul(g, g, tmp), total)
    ops.add(ops.sqrt(total, tmp), group["eps"], tmp)
    self.descend(w, ops.div(g, tmp, g), lr / (1.0 + (self.t - 1) * group["lr_decay"]))


@_optimizer("rmsprop")
def _rmsprop(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    alpha = group["alpha"]
    self.l2(w, g)
    square_avg = self.array("square_avg", 0.0)
    self.average(square_avg, g, alpha, square=True)
    denom = self.array("denom")
    if group.get("centered"):
        grad_avg = self.array("grad_avg", 0.0)
        self.average(grad_avg, g, alpha)
        ops.sub(square_avg, ops.mul(grad_avg, grad_avg, denom), denom)
        ops.sqrt(denom, denom)
    else:
        ops.sqrt(square_avg, denom)
    ops.add(denom, group["eps"], denom)
    ops.div(g, denom, g)
    momentum = group.get("momentum", 0.0)
    if momentum > 0:
        buf = self.array("momentum_buffer", 0.0)
        ops.add(ops.mul(buf, momentum, buf), g, buf)
        ops.copy(g, buf)
    self.descend(w, g, lr)


@_optimizer("adadelta")
def _adadelta(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    rho, eps = group["rho"], group["eps"]
    self.l2(w, g)
    square_avg, acc_delta = self.array("square_avg", 0.0), self.array("acc_delta", 0.0)
    self.average(square_avg, g, rho, square=True)
    std, delta = self.array("denom"), self.array("delta")
    ops.sqrt(ops.add(square_avg, eps, std), std)
    ops.sqrt(ops.add(acc_delta, eps, delta), delta)
    ops.mul(ops.div(delta, std, delta), g, delta)
    self.average(acc_delta, delta, rho, square=True)
    self.descend(w, delta, lr)


@_optimizer("adamax")
def _adamax(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    beta1, beta2 = group["betas"]
    self.l2(w, g)
    m, u, tmp = self.array("exp_avg", 0.0), self.array("exp_inf", 0.0), self.array("tmp")
    self.average(m, g, beta1)
    ops.add(ops.abs(g, tmp), group["eps"], tmp)
    ops.maximum(ops.mul(u, beta2, u), tmp, u)
    ops.mul(u, 1.0 - beta1 ** self.t, tmp)
    self.descend(w, ops.div(m, tmp, g), lr)


def _nadam_mu(group: Mapping[str, Any], t: int) -> float:
    return group["betas"][0] * (1.0 - 0.5 * 0.96 ** (t * group["momentum_decay"]))


@_optimizer("nadam")
def _nadam(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    beta2 = group["betas"][1]
    self.weight_decay(w, g, lr)
    mu, mu_next = _nadam_mu(group, self.t), _nadam_mu(group, self.t + 1)
    product = self.scalars.get("mu_product", 1.0) * mu
    self.scalars["mu_product"] = product
    m, v = _moments(self, g)
    denom, tmp = self.array("denom"), self.array("tmp")
    ops.div(v, 1.0 - beta2 ** self.t, denom)
    ops.add(ops.sqrt(denom, denom), group["eps"], denom)
    ops.mul(g, (1.0 - mu) / (1.0 - product), g)
    ops.add(ops.mul(m, mu_next / (1.0 - product * mu_next), tmp), g, g)  # m̂
    self.descend(w, ops.div(g, denom, g), lr)


@_optimizer("radam")
def _radam(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    beta1, beta2 = group["betas"]
    self.weight_decay(w, g, lr)
    m, v = _moments(self, g)
    t = self.t
    correction2 = 1.0 - beta2 ** t
    ops.div(m, 1.0 - beta1 ** t, g)  # m̂
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2 ** t / correction2
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        denom = self.array("denom")
        ops.add(ops.sqrt(v, denom), group["eps"], denom)
        self.descend(w, ops.div(g, denom, g), lr * rect * math.sqrt(correction2))
    else:
        self.descend(w, g, lr)


@_optimizer("asgd")
def _asgd(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    group = self.group
    eta = self.scalars.get("eta", lr)  # torch starts from the rate of the first step
    self.l2(w, g)
    self.ops.mul(w, 1.0 - group["lambd"] * eta, w)
    self.descend(w, g, eta)
    self.scalars["eta"] = lr / ((1.0 + group["lambd"] * lr * self.t) ** group["alpha"])


@_optimizer("rprop")
def _rprop(self: PortableOptimizer, w: Any, g: Any, lr: float) -> None:
    ops, group = self.ops, self.group
    etaminus, etaplus = group["etas"]
    low, high = group["step_sizes"]
    prev, size = self.array("prev", 0.0), self.array("step_size", lr)
    product, factor = self.array("tmp"), self.array("denom")
    up, down = self.mask("up"), self.mask("down")
    ops.mul(g, prev, product)
    ops.greater(product, 0.0, up)
    ops.less(product, 0.0, down)
    ops.fill(factor, 1.0)
    ops.put(factor, up, etaplus)
    ops.put(factor, down, etaminus)
    ops.clamp(ops.mul(size, factor, size), low, high, size)
    ops.put(g, down, 0.0)
    ops.copy(prev, g)
    ops.sub(w, size, product)   # w − s
    ops.add(w, size, factor)    # w + s
    ops.greater(g, 0.0, up)
    ops.less(g, 0.0, down)
    ops.put(w, up, product)
    ops.put(w, down, factor)


__all__ = ["PortableOptimizer", "STEPS"]
