"""Which ``torch.optim`` optimizers AME can use, and checking their arguments.

AME runs tensor by tensor, in chunks, so only optimizers whose update of an element
depends on that element alone (and on the step number) are allowed. Their arguments
are checked by building the real optimizer once on a one-element parameter, so torch's
own validation (``betas`` in [0, 1), ``eps`` ≥ 0...) runs before any work.

>>> resolve_optimizer("AdamW").__name__
'AdamW'
>>> check_optimizer("adam", 1e-3, {"betas": [0.8, 0.99]})["betas"]
(0.8, 0.99)
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

ELEMENTWISE = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "rmsprop": "RMSprop",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "radam": "RAdam",
    "asgd": "ASGD",
    "rprop": "Rprop",
}
_REFUSED = {
    "lbfgs": "it needs a loss closure and a line search over the whole model",
    "sparseadam": "it only accepts sparse gradients",
    "adafactor": "it factors its second moment over the rows and columns of a tensor, so it is not "
                 "elementwise and cannot be streamed in chunks",
    "muon": "it orthogonalises whole weight matrices, so it is not elementwise and cannot be streamed in chunks",
}
# Implementation switches: accepted, but not recorded in the report.
_IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")
# SGD's default rate in the paper (GD ensembling, eq. 4) is 1; torch's is 1e-3.
_PAPER_DEFAULT_LR = {"sgd": 1.0}


def resolve_optimizer(name: str) -> type:
    """The ``torch.optim`` class called ``name`` (any case); ``ValueError`` naming the choices."""
    import torch

    key = name.lower()
    if key in _REFUSED:
        raise ValueError(f"optimizer {name!r} cannot be used by AME: {_REFUSED[key]}; "
                         f"choose one of {', '.join(ELEMENTWISE)}")
    if key not in ELEMENTWISE:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(ELEMENTWISE)} "
                         "(torch.optim names, any case)")
    return getattr(torch.optim, ELEMENTWISE[key])


def optimizer_arguments(cls: type) -> dict[str, Any]:
    """Keyword arguments of optimizer ``cls`` (except ``params``) with their defaults."""
    signature = inspect.signature(cls.__init__)
    return {name: p.default for name, p in signature.parameters.items()
            if name not in ("self", "params") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def default_lr(name: str) -> float:
    """The learning rate used when none is given: 1 for SGD (the paper's GD ensembling), else torch's."""
    key = name.lower()
    if key in _PAPER_DEFAULT_LR:
        return _PAPER_DEFAULT_LR[key]
    default = optimizer_arguments(resolve_optimizer(name))["lr"]
    return float(default)


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def check_optimizer(name: str, lr: float, kwargs: Mapping[str, Any],
                    method_fields: Sequence[str] = ()) -> dict[str, Any]:
    """Validate ``kwargs`` for optimizer ``name``; return every argument it will run with.

    Raises ``ValueError`` with a message naming the bad argument and the accepted ones
    (``method_fields``: the method's own parameter names, listed in that message).
    """
    import torch

    cls = resolve_optimizer(name)
    accepted = optimizer_arguments(cls)
    for key in kwargs:
        if key == "lr":
            raise ValueError("lr is a parameter of the method itself; give it once, as lr")
        if key not in accepted:
            choices = ", ".join(k for k in accepted if k != "lr")
            own = f" nor an AME parameter ({', '.join(method_fields)})" if method_fields else ""
            raise ValueError(f"unknown parameter {key!r}: not an argument of torch.optim.{cls.__name__} "
                             f"(lr, {choices}){own}; check the spelling or the optimizer")
    arguments = {key: _normalise(value) for key, value in kwargs.items()}
    try:
        probe = cls([torch.nn.Parameter(torch.zeros(1))], lr=lr, **arguments)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"torch.optim.{cls.__name__} rejects these arguments: {error}") from None
    return {k: v for k, v in probe.defaults.items() if k not in _IMPLEMENTATION_FLAGS}
