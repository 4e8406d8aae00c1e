"""The parameter groups ``torch.optim`` builds, known without importing torch.

Importing torch takes seconds of CPU time, which a CPU merge with AME's default (portable,
numpy) arithmetic does not otherwise need. For the torch releases listed in
:data:`VERIFIED_TORCH`, this module holds each elementwise optimizer's defaults in the order
its constructor stores them, and the checks its constructor runs. :func:`known_group`
answers only for plainly valid arguments (every check passes, no implementation flag
given); anything else returns ``None`` and the caller asks torch itself, so torch's own
message explains a refused value. tests/methods/test_ame_torch_groups.py compares every
group with the one the installed torch builds.

>>> known_group("adam", 0.01, {"betas": [0.8, 0.99]}, torch_version="2.13.0")["betas"]
(0.8, 0.99)
>>> known_group("adam", 0.01, {"betas": [1.5, 0.99]}, torch_version="2.13.0") is None  # torch explains
True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from ...compat.versions import installed_version

VERIFIED_TORCH = ("2.13",)  # major.minor releases whose groups were compared with torch's (CI)

# Arguments that select an implementation (torch is needed to honour them).
_FLAGS = ("foreach", "fused", "capturable", "differentiable")
_BETAS = (0.9, 0.999)

# Each optimizer's group after ``lr``, in the order torch stores it: (name, default).
GROUPS: dict[str, tuple[tuple[str, Any], ...]] = {
    "sgd": (("momentum", 0), ("dampening", 0), ("weight_decay", 0), ("nesterov", False), ("maximize", False),
            ("foreach", None), ("differentiable", False), ("fused", None)),
    "adam": (("betas", _BETAS), ("eps", 1e-08), ("weight_decay", 0), ("amsgrad", False), ("maximize", False),
             ("foreach", None), ("capturable", False), ("differentiable", False), ("fused", None),
             ("decoupled_weight_decay", False)),
    "adamw": (("betas", _BETAS), ("eps", 1e-08), ("weight_decay", 0.01), ("amsgrad", False), ("maximize", False),
              ("foreach", None), ("capturable", False), ("differentiable", False), ("fused", None),
              ("decoupled_weight_decay", True)),
    "adagrad": (("lr_decay", 0), ("eps", 1e-10), ("weight_decay", 0), ("initial_accumulator_value", 0),
                ("foreach", None), ("maximize", False), ("differentiable", False), ("fused", None)),
    "adadelta": (("rho", 0.9), ("eps", 1e-06), ("weight_decay", 0), ("maximize", False), ("capturable", False),
                 ("foreach", None), ("differentiable", False)),
    "rmsprop": (("momentum", 0), ("alpha", 0.99), ("eps", 1e-08), ("centered", False), ("weight_decay", 0),
                ("capturable", False), ("foreach", None), ("maximize", False), ("differentiable", False)),
    "adamax": (("betas", _BETAS), ("eps", 1e-08), ("weight_decay", 0), ("foreach", None), ("maximize", False),
               ("differentiable", False), ("capturable", False)),
    "nadam": (("betas", _BETAS), ("eps", 1e-08), ("weight_decay", 0), ("momentum_decay", 0.004),
              ("decoupled_weight_decay", False), ("maximize", False), ("foreach", None), ("capturable", False),
              ("differentiable", False)),
    "radam": (("betas", _BETAS), ("eps", 1e-08), ("weight_decay", 0), ("maximize", False), ("foreach", None),
              ("capturable", False), ("decoupled_weight_decay", False), ("differentiable", False)),
    "asgd": (("lambd", 0.0001), ("alpha", 0.75), ("t0", 1000000.0), ("weight_decay", 0), ("foreach", None),
             ("maximize", False), ("differentiable", False), ("capturable", False)),
    "rprop": (("etas", (0.5, 1.2)), ("step_sizes", (1e-06, 50)), ("foreach", None), ("maximize", False),
              ("differentiable", False), ("capturable", False)),
}
# Constructor defaults of ``lr`` (torch's; AME's own SGD default is decided in optim.py).
DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-3, "adamw": 1e-3, "adagrad": 1e-2, "adadelta": 1.0, "rmsprop": 1e-2,
              "adamax": 2e-3, "nadam": 2e-3, "radam": 1e-3, "asgd": 1e-2, "rprop": 1e-2}
# Group entries that are not constructor arguments (AdamW always decouples its weight decay).
_NOT_ARGUMENTS = {"adamw": {"decoupled_weight_decay"}}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least_zero(value: Any) -> bool:
    return _number(value) and value >= 0


def _pair(check: Callable[[Any, Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_number, v)) and check(*v)


# Values every supported torch accepts (a subset of what it accepts is enough: the rest goes to torch).
_PLAIN: dict[str, Callable[[Any], bool]] = {
    "momentum": _at_least_zero, "dampening": _number, "weight_decay": _at_least_zero, "eps": _at_least_zero,
    "lr_decay": _at_least_zero, "initial_accumulator_value": _at_least_zero, "alpha": _at_least_zero,
    "momentum_decay": _at_least_zero, "lambd": _number, "t0": _number,
    "rho": lambda v: _number(v) and 0 <= v <= 1,
    "betas": _pair(lambda a, b: 0 <= a < 1 and 0 <= b < 1),
    "etas": _pair(lambda minus, plus: 0 < minus < 1 < plus),
    "step_sizes": _pair(lambda low, high: True),
    **{flag: lambda v: isinstance(v, bool) for flag in
       ("nesterov", "maximize", "amsgrad", "centered", "decoupled_weight_decay")},
}


def accepted_arguments(name: str) -> list[str]:
    """The constructor's keyword arguments for optimizer ``name`` (``lr`` first)."""
    not_arguments = _NOT_ARGUMENTS.get(name, set())
    return ["lr"] + [key for key, _ in GROUPS[name] if key not in not_arguments]


def _plainly_valid(name: str, lr: Any, kwargs: Mapping[str, Any]) -> bool:
    arguments = set(accepted_arguments(name))
    for key, value in kwargs.items():
        if key == "lr" or key not in arguments or key in _FLAGS or not _PLAIN[key](value):
            return False
    if name == "sgd" and kwargs.get("nesterov") and (kwargs.get("momentum", 0) <= 0 or kwargs.get("dampening", 0)):
        return False
    return _at_least_zero(lr)


def verified(torch_version: str | None = None) -> bool:
    """Whether the installed torch (or ``torch_version``) is one whose groups this table holds."""
    version = torch_version or installed_version("torch")
    return version is not None and ".".join(version.split("+")[0].split(".")[:2]) in VERIFIED_TORCH


def known_group(name: str, lr: float, kwargs: Mapping[str, Any], *,
                torch_version: str | None = None) -> dict[str, Any] | None:
    """``torch.optim.<name>(params, lr=lr, **kwargs).param_groups[0]`` without ``params``, or ``None``.

    ``None`` when torch must answer: an unverified torch release, an implementation flag,
    an unknown argument or a value outside what every supported torch accepts.
    """
    key = name.lower()
    if key not in GROUPS or not verified(torch_version) or not _plainly_valid(key, lr, kwargs):
        return None
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return {"lr": lr, **{k: given.get(k, default) for k, default in GROUPS[key]}}
