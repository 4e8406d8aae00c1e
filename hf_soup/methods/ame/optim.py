"""Which ``torch.optim`` optimizers AME can use, and checking their arguments.

AME runs tensor by tensor, in chunks, so only optimizers whose update of an element
depends on that element alone (and on the step number) are allowed. Their arguments
are checked by running the real optimizer's constructor once on a one-element
parameter, so torch's own validation (``betas`` in [0, 1), ``eps`` ≥ 0...) runs before
any work. That construction skips the dynamo guard torch wraps around
``Optimizer.add_param_group`` (it would import ``torch._dynamo``, ~70 MB); everything
else is the class's own code. AME then steps with torch's functional optimizers
(:mod:`hf_soup.methods.ame.functional`), never with an ``Optimizer`` object. Plainly valid
arguments on a verified torch release are answered from :mod:`.torch_groups` without
importing torch (the portable CPU path never needs it).

>>> resolve_optimizer("AdamW").__name__
'AdamW'
>>> check_optimizer("adam", 1e-3, {"betas": [0.8, 0.99]})["betas"]
(0.8, 0.99)
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

from . import torch_groups

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


def optimizer_class_name(name: str) -> str:
    """The ``torch.optim`` class name of optimizer ``name`` (any case); ``ValueError`` naming the choices."""
    key = name.lower()
    if key in _REFUSED:
        raise ValueError(f"optimizer {name!r} cannot be used by AME: {_REFUSED[key]}; "
                         f"choose one of {', '.join(ELEMENTWISE)}")
    if key not in ELEMENTWISE:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(ELEMENTWISE)} "
                         "(torch.optim names, any case)")
    return ELEMENTWISE[key]


def resolve_optimizer(name: str) -> type:
    """The ``torch.optim`` class called ``name`` (any case); ``ValueError`` naming the choices."""
    class_name = optimizer_class_name(name)
    import torch

    return getattr(torch.optim, class_name)


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
    if torch_groups.verified() and key in torch_groups.DEFAULT_LR:
        return torch_groups.DEFAULT_LR[key]
    default = optimizer_arguments(resolve_optimizer(name))["lr"]
    return float(default)


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def construct_without_dynamo(cls: type, params: Any, **kwargs: Any) -> Any:
    """``cls(params, **kwargs)``, built without importing ``torch._dynamo``.

    Runs the class's own ``__init__`` (all of torch's checks and defaults); only the
    dynamo-disabling wrapper around ``Optimizer.add_param_group`` is peeled off
    (``inspect.unwrap``). The object is for reading ``defaults``/``param_groups``: its
    ``step`` would still import dynamo.
    """
    from torch.optim.optimizer import Optimizer

    optimizer = cls.__new__(cls)
    add_param_group = inspect.unwrap(Optimizer.add_param_group)
    optimizer.add_param_group = add_param_group.__get__(optimizer)  # instance attribute: found first
    cls.__init__(optimizer, params, **kwargs)
    del optimizer.add_param_group
    return optimizer


def optimizer_group(name: str, lr: float, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The complete parameter group ``torch.optim.<name>(params, lr=lr, **kwargs)`` would hold.

    Every hyper-parameter, defaults filled in by torch (implementation flags included),
    without the ``params`` entry. Raises what the constructor raises.

    >>> optimizer_group("adamw", 0.01, {})["decoupled_weight_decay"]
    True
    """
    known = torch_groups.known_group(name, lr, kwargs)
    if known is not None:
        return known
    import torch

    cls = resolve_optimizer(name)
    arguments = {key: _normalise(value) for key, value in kwargs.items()}
    probe = construct_without_dynamo(cls, [torch.zeros(1)], lr=lr, **arguments)
    return {k: v for k, v in probe.param_groups[0].items() if k != "params"}


def check_optimizer(name: str, lr: float, kwargs: Mapping[str, Any],
                    method_fields: Sequence[str] = ()) -> dict[str, Any]:
    """Validate ``kwargs`` for optimizer ``name``; return every argument it will run with.

    Raises ``ValueError`` with a message naming the bad argument and the accepted ones
    (``method_fields``: the method's own parameter names, listed in that message).
    """
    optimizer_class_name(name)  # an unknown or refused optimizer: its own message first
    known = torch_groups.known_group(name, lr, kwargs)
    if known is not None:
        defaults = dict(torch_groups.GROUPS[name.lower()])
        _check_forwarded(name, known, {key: defaults[key] for key in torch_groups.accepted_arguments(name.lower())
                                       if key != "lr"}, "")
        return {k: v for k, v in known.items() if k not in _IMPLEMENTATION_FLAGS}
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
    try:
        group = optimizer_group(name, lr, kwargs)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"torch.optim.{cls.__name__} rejects these arguments: {error}") from None
    _check_forwarded(name, group, accepted, f" (torch {torch.__version__})")
    return {k: v for k, v in group.items() if k not in _IMPLEMENTATION_FLAGS}


def _check_forwarded(name: str, group: Mapping[str, Any], defaults: Mapping[str, Any], torch_note: str) -> None:
    """Refuse arguments set away from their defaults that the functional optimizer path would not pass on."""
    from .functional import unforwarded

    ignored = [key for key in unforwarded(name, group) if group[key] != defaults.get(key)]
    if ignored:
        raise ValueError(f"argument(s) {', '.join(ignored)} of torch.optim.{optimizer_class_name(name)}{torch_note} "
                         "are not passed on by AME's functional optimizer path; leave them at their defaults")
