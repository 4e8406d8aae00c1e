"""``hf-soup methods``: every registered soup method with the first line of its description."""

from __future__ import annotations


def add_methods_parser(sub) -> None:
    """Add ``hf-soup methods`` to a sub-parser group."""
    p = sub.add_parser("methods", help="list the soup methods",
                       description="List the soup methods (see `hf-soup merge --method NAME -p KEY=VALUE`).")
    p.set_defaults(handler=methods_command)


def methods_command(args) -> int:
    """Print each registered method with the first line of its description."""
    from ..methods.registry import available_methods, get_method_class

    for name in available_methods():
        cls = get_method_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "") if cls.__doc__ else ""
        needs = "  [needs evaluation]" if cls.needs_evaluation else ""
        needs += "  [needs base_model]" if getattr(cls, "uses_base", "never") == "required" else ""
        print(f"{name:<16} {summary}{needs}")
    return 0
