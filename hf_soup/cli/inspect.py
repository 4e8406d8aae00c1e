"""``hf-soup inspect REF...``: can these ingredients be souped? (alignment, as text or JSON)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import AlignmentError, HfSoupError
from .common import add_token_flag


def add_inspect_parser(sub) -> None:
    """Add ``hf-soup inspect`` to a sub-parser group."""
    p = sub.add_parser("inspect", help="check that ingredients can be souped", description="Print the alignment of ingredients.")
    p.add_argument("refs", nargs="+", metavar="REF", help="ingredient: Hub repo ID (org/name[@revision]) or local path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--on-missing", choices=["error", "skip", "first"], default="error",
                   help="keys some ingredients lack: error (default), skip them, or copy them from the first that has them")
    add_token_flag(p)
    p.add_argument("--base-model", metavar="REF", help="base model of PEFT adapter ingredients (default: the one they name)")
    p.set_defaults(handler=inspect_command)


def inspect_command(args) -> int:
    """Handler of ``hf-soup inspect``: 0 when the ingredients can be souped, 1 when not."""
    from contextlib import ExitStack

    from ..prepare import open_aligned, resolve_with_bases

    try:
        ingredients, _ = resolve_with_bases(args.refs, args.base_model, token=args.token)
    except HfSoupError as error:
        if args.json:  # scripts get JSON on stdout for every failure; the error also goes to stderr
            print(json.dumps({"ok": False, "ingredients": list(args.refs), "error": str(error),
                              "error_type": type(error).__name__, "differences": []}, indent=2))
        raise
    names = [i.name for i in ingredients]
    with ExitStack() as stack:
        try:
            summary = open_aligned(stack, ingredients, on_missing=args.on_missing)[1].summary()
            summary["ok"] = True
        except AlignmentError as error:
            summary = {"ok": False, "ingredients": names, "error": str(error), "differences": error.differences}
    summary["revisions"] = {i.name: i.sha for i in ingredients}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0 if summary["ok"] else 1


def _print_summary(summary: dict[str, Any]) -> None:
    for name in summary["ingredients"]:
        sha = summary["revisions"].get(name)
        print(f"  ingredient  {name}" + (f" @ {sha[:12]}" if sha else ""))
    if not summary["ok"]:
        print(f"cannot be souped: {summary['error']}")
        return
    print(f"model type    {', '.join(sorted({t for t in summary['model_types'] if t})) or 'unknown (no config)'}")
    print(f"parameters    {summary['num_parameters']:,} in {summary['num_tensors']} tensors "
          f"({summary['shared_keys']} shared by all)")
    for name, keys in summary["missing_keys"].items():
        print(f"missing in {name}: {len(keys)} key(s), e.g. {', '.join(keys[:3])}")
    for tie in summary["tied_weights"]:
        print(f"tied          {tie['ingredient']}: {tie['key']} -> {tie['tied_to']}")
    for diff in summary["dtype_differences"][:5]:
        print(f"dtype differs {diff['key']}: {diff['dtypes']}")
    if summary["copied_keys"]:
        print(f"copied        {len(summary['copied_keys'])} non-float tensor(s) taken from the first ingredient")
    print("ok: these ingredients can be souped")
