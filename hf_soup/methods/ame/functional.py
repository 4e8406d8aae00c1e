"""Step one tensor with torch's functional optimizers, exactly as ``optimizer.step()`` would.

Building or stepping a ``torch.optim.Optimizer`` imports ``torch._dynamo`` (about 70 MB
of resident memory, a third of AME's footprint): the base class wraps ``step`` and
``add_param_group`` in dynamo guards. The update itself lives in module-level functions
(``torch.optim.adam.adam``, ``torch.optim.sgd.sgd``...) that the classes call and that do
not import dynamo. :class:`FunctionalOptimizer` calls those functions with the state the
class's ``_init_group`` creates on the first step (``step`` counters, moment buffers,
Adagrad's ``initial_accumulator_value``, ASGD's ``eta``/``mu``/``ax``, Rprop's
``prev``/``step_size`` from the first step's rate, NAdam's ``mu_product``...) and with the
arguments the class's ``step`` passes, so the result is bit-identical to
``cls([param], **group).step()`` (tested for every optimizer against the installed torch).

The hyper-parameters come from :func:`hf_soup.methods.ame.optim.optimizer_group`, which
runs the real class constructor (torch's own argument checks) without importing dynamo.
Not mirrored, because AME never meets them: complex or sparse tensors, AMP's
``grad_scale``/``found_inf``, and the CUDA-graph capture health check.

>>> import torch
>>> from hf_soup.methods.ame.optim import optimizer_group
>>> w, g = torch.zeros(3), torch.ones(3)
>>> opt = FunctionalOptimizer("sgd", w, g, optimizer_group("sgd", 0.5, {"momentum": 0.9}))
>>> opt.step(); opt.step(lr=0.1); w
tensor([-0.6900, -0.6900, -0.6900])
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

# name -> (torch.optim submodule, functional the class's ``step`` calls). AdamW's step is
# Adam's: it calls ``adam`` with ``decoupled_weight_decay=True`` (from its group).
FUNCTIONALS = {
    "sgd": ("sgd", "sgd"),
    "adam": ("adam", "adam"),
    "adamw": ("adam", "adam"),
    "adagrad": ("adagrad", "adagrad"),
    "adadelta": ("adadelta", "adadelta"),
    "rmsprop": ("rmsprop", "rmsprop"),
    "adamax": ("adamax", "adamax"),
    "nadam": ("nadam", "nadam"),
    "radam": ("radam", "radam"),
    "asgd": ("asgd", "asgd"),
    "rprop": ("rprop", "rprop"),
}


def _scalar_dtype(fused: Any = None) -> Any:
    from torch.optim.optimizer import _get_scalar_dtype

    return _get_scalar_dtype(is_fused=fused)


def _step_counter(p: Any, on_device: bool, fused: Any = None) -> Any:
    """The ``step`` tensor: on the parameter's device when capturable/fused, else a CPU scalar."""
    import torch

    if on_device:
        return torch.zeros((), dtype=_scalar_dtype(fused), device=p.device)
    return torch.tensor(0.0, dtype=_scalar_dtype())


def _check_fused(p: Any, group: Mapping[str, Any]) -> None:
    if group.get("fused"):
        from torch.optim.optimizer import _device_dtype_check_for_fused

        _device_dtype_check_for_fused(p)


def _zeros(p: Any) -> Any:
    import torch

    return torch.zeros_like(p, memory_format=torch.preserve_format)


# -- first-step state, as each class's ``_init_group`` creates it ---------------------------

def _init_sgd(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    _check_fused(p, group)
    return {}  # the momentum buffer is created by ``sgd`` itself, from the first gradient


def _init_adam(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    _check_fused(p, group)
    state = {"step": _step_counter(p, bool(group["capturable"] or group["fused"]), group["fused"]),
             "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}
    if group["amsgrad"]:
        state["max_exp_avg_sq"] = _zeros(p)
    return state


def _init_adagrad(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    _check_fused(p, group)
    return {"step": _step_counter(p, bool(group["fused"]), group["fused"]),
            "sum": torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)}


def _init_adadelta(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": _step_counter(p, bool(group["capturable"])), "square_avg": _zeros(p), "acc_delta": _zeros(p)}


def _init_rmsprop(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    state = {"step": _step_counter(p, bool(group["capturable"])), "square_avg": _zeros(p)}
    if group["momentum"] > 0:
        state["momentum_buffer"] = _zeros(p)
    if group["centered"]:
        state["grad_avg"] = _zeros(p)
    return state


def _init_adamax(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": _step_counter(p, bool(group["capturable"])), "exp_avg": _zeros(p), "exp_inf": _zeros(p)}


def _init_nadam(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    mu_product = (torch.ones((), dtype=_scalar_dtype(), device=p.device) if group["capturable"]
                  else torch.tensor(1.0, dtype=_scalar_dtype()))
    return {"step": _step_counter(p, bool(group["capturable"])), "mu_product": mu_product,
            "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}


def _init_radam(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    return {"step": _step_counter(p, bool(group["capturable"])), "exp_avg": _zeros(p), "exp_avg_sq": _zeros(p)}


def _init_asgd(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    import torch
    from torch.optim.optimizer import _to_scalar

    dtype = _scalar_dtype()
    return {"step": torch.zeros((), device=p.device, dtype=dtype),
            "eta": torch.as_tensor(_to_scalar(group["lr"]), device=p.device, dtype=dtype).clone().detach(),
            "mu": torch.ones((), device=p.device, dtype=dtype), "ax": _zeros(p)}


def _init_rprop(p: Any, g: Any, group: Mapping[str, Any]) -> dict[str, Any]:
    import torch
    from torch.optim.optimizer import _to_scalar

    return {"step": _step_counter(p, bool(group["capturable"])), "prev": _zeros(p),
            "step_size": torch.full_like(g, _to_scalar(group["lr"]))}


# -- one step, with the arguments each class's ``step`` passes --------------------------------

def _flags(group: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {name: group[name] for name in names}


def _call_sgd(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    buffers = [s.get("momentum_buffer")] if group["momentum"] != 0 else []
    fn([p], [g], buffers, has_sparse_grad=False, grad_scale=None, found_inf=None,
       **_flags(group, "weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize", "foreach", "fused"))
    if group["momentum"] != 0:
        s["momentum_buffer"] = buffers[0]


def _call_adam(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    fn([p], [g], [s["exp_avg"]], [s["exp_avg_sq"]], [s["max_exp_avg_sq"]] if group["amsgrad"] else [], [s["step"]],
       has_complex=False, beta1=beta1, beta2=beta2, grad_scale=None, found_inf=None,
       **_flags(group, "amsgrad", "lr", "weight_decay", "eps", "maximize", "foreach", "capturable",
                "differentiable", "fused", "decoupled_weight_decay"))


def _call_adagrad(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    fn([p], [g], [s["sum"]], [s["step"]], has_sparse_grad=False, has_complex=False, grad_scale=None, found_inf=None,
       **_flags(group, "lr", "weight_decay", "lr_decay", "eps", "foreach", "maximize", "differentiable", "fused"))


def _call_adadelta(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    fn([p], [g], [s["square_avg"]], [s["acc_delta"]], [s["step"]], has_complex=False,
       **_flags(group, "lr", "rho", "eps", "weight_decay", "foreach", "maximize", "differentiable", "capturable"))


def _call_rmsprop(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    fn([p], [g], [s["square_avg"]], [s["grad_avg"]] if group["centered"] else [],
       [s["momentum_buffer"]] if group["momentum"] > 0 else [], [s["step"]], has_complex=False,
       **_flags(group, "lr", "alpha", "eps", "weight_decay", "momentum", "centered", "foreach", "maximize",
                "differentiable", "capturable"))


def _call_adamax(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    fn([p], [g], [s["exp_avg"]], [s["exp_inf"]], [s["step"]], beta1=beta1, beta2=beta2, has_complex=False,
       **_flags(group, "eps", "lr", "weight_decay", "foreach", "maximize", "differentiable", "capturable"))


def _call_nadam(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    fn([p], [g], [s["exp_avg"]], [s["exp_avg_sq"]], [s["mu_product"]], [s["step"]], beta1=beta1, beta2=beta2,
       has_complex=False, **_flags(group, "lr", "weight_decay", "momentum_decay", "eps", "maximize",
                                   "decoupled_weight_decay", "foreach", "capturable", "differentiable"))


def _call_radam(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    fn([p], [g], [s["exp_avg"]], [s["exp_avg_sq"]], [s["step"]], beta1=beta1, beta2=beta2, has_complex=False,
       **_flags(group, "lr", "weight_decay", "eps", "maximize", "foreach", "capturable", "differentiable",
                "decoupled_weight_decay"))


def _call_asgd(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    fn([p], [g], [s["ax"]], [s["mu"]], [s["eta"]], [s["step"]], has_complex=False,
       **_flags(group, "lambd", "lr", "t0", "alpha", "weight_decay", "foreach", "maximize", "differentiable",
                "capturable"))


def _call_rprop(fn: Callable, p: Any, g: Any, s: dict[str, Any], group: Mapping[str, Any]) -> None:
    etaminus, etaplus = group["etas"]
    step_size_min, step_size_max = group["step_sizes"]
    fn([p], [g], [s["prev"]], [s["step_size"]], [s["step"]], step_size_min=step_size_min,
       step_size_max=step_size_max, etaminus=etaminus, etaplus=etaplus, has_complex=False,
       **_flags(group, "foreach", "maximize", "differentiable", "capturable"))


_INIT = {"sgd": _init_sgd, "adam": _init_adam, "adamw": _init_adam, "adagrad": _init_adagrad,
         "adadelta": _init_adadelta, "rmsprop": _init_rmsprop, "adamax": _init_adamax, "nadam": _init_nadam,
         "radam": _init_radam, "asgd": _init_asgd, "rprop": _init_rprop}
_CALL = {"sgd": _call_sgd, "adam": _call_adam, "adamw": _call_adam, "adagrad": _call_adagrad,
         "adadelta": _call_adadelta, "rmsprop": _call_rmsprop, "adamax": _call_adamax, "nadam": _call_nadam,
         "radam": _call_radam, "asgd": _call_asgd, "rprop": _call_rprop}
# Group entries each path reads (``params`` aside): a torch release that adds an argument
# shows up as a group key missing here, which :func:`unforwarded` reports.
FORWARDED = {
    "sgd": {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
            "fused"},
    "adam": {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable", "differentiable",
             "fused", "decoupled_weight_decay"},
    "adagrad": {"lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value", "foreach", "maximize",
                "differentiable", "fused"},
    "adadelta": {"lr", "rho", "eps", "weight_decay", "maximize", "capturable", "foreach", "differentiable"},
    "rmsprop": {"lr", "momentum", "alpha", "eps", "centered", "weight_decay", "capturable", "foreach", "maximize",
                "differentiable"},
    "adamax": {"lr", "betas", "eps", "weight_decay", "foreach", "maximize", "differentiable", "capturable"},
    "nadam": {"lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay", "maximize",
              "foreach", "capturable", "differentiable"},
    "radam": {"lr", "betas", "eps", "weight_decay", "maximize", "foreach", "capturable", "decoupled_weight_decay",
              "differentiable"},
    "asgd": {"lr", "lambd", "alpha", "t0", "weight_decay", "foreach", "maximize", "differentiable", "capturable"},
    "rprop": {"lr", "etas", "step_sizes", "foreach", "maximize", "differentiable", "capturable"},
}
FORWARDED["adamw"] = FORWARDED["adam"]


def unforwarded(name: str, group: Mapping[str, Any]) -> list[str]:
    """Group entries of optimizer ``name`` that the functional path would not pass on."""
    return sorted(set(group) - FORWARDED[name.lower()] - {"params"})


def functional(name: str) -> Callable:
    """The module-level function ``torch.optim.<Class>.step`` calls for optimizer ``name``."""
    module, function = FUNCTIONALS[name.lower()]
    return getattr(importlib.import_module(f"torch.optim.{module}"), function)


class FunctionalOptimizer:
    """One tensor ``param`` with gradient ``grad``, stepped like ``cls([param], **group).step()``.

    ``group``: the optimizer's complete parameter group (every hyper-parameter, as
    :func:`~hf_soup.methods.ame.optim.optimizer_group` returns it). ``param`` and the state
    are updated in place; :attr:`state` holds what ``optimizer.state[param]`` would.
    """

    def __init__(self, name: str, param: Any, grad: Any, group: Mapping[str, Any]):
        key = name.lower()
        if key not in FUNCTIONALS:
            raise ValueError(f"no functional path for optimizer {name!r}; choose one of {', '.join(FUNCTIONALS)}")
        self.name = key
        self.param, self.grad = param, grad
        self.group = {k: v for k, v in group.items() if k != "params"}
        self.state: dict[str, Any] = {}
        self._started = False
        self._function = functional(key)
        self._call = _CALL[key]

    def step(self, lr: float | None = None) -> None:
        """One optimizer step with the current gradient (at rate ``lr`` when given)."""
        import torch

        if lr is not None:
            self.group["lr"] = lr
        with torch.set_grad_enabled(bool(self.group["differentiable"])):
            if not self._started:  # lazily, like ``_init_group``: Rprop and ASGD read this step's rate
                self.state = _INIT[self.name](self.param, self.grad, self.group)
                self._started = True
            self._call(self._function, self.param, self.grad, self.state, self.group)
