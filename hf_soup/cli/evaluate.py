"""``hf-soup evaluate REF... --eval-dataset DATA``: ingredient, logit-ensemble and soup scores, no soup written."""

from __future__ import annotations

import json
import sys

from .common import add_eval_flags, add_token_flag, plural


def add_evaluate_parser(sub) -> None:
    """Add ``hf-soup evaluate`` to a sub-parser group."""
    p = sub.add_parser("evaluate", help="score ingredients, their logit ensemble and the uniform soup",
                       description="Score each ingredient, the logit ensemble (a reference, not a soup) and soups.")
    p.add_argument("refs", nargs="+", metavar="REF")
    add_eval_flags(p, required=True)
    p.add_argument("--soup", action="append", metavar="METHOD", help="soup method to score (default: uniform); repeatable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_token_flag(p)
    p.set_defaults(handler=evaluate_command)


def evaluate_command(args) -> int:
    """Handler of ``hf-soup evaluate``: the comparison table, or JSON."""
    from ..evaluation.compare import comparison_markdown
    from ..scores import evaluate

    result = evaluate(args.refs, {"dataset": args.eval_dataset, **dict(args.eval)}, token=args.token,
                      soups=args.soup or ("uniform",), progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        split = f" ({result['split']} split)" if result.get("split") else ""  # data files have no split name
        print(f"{result['metric']} on {result['num_examples']} examples{split}, "
              f"{plural(result['num_full_evaluations'], 'full evaluation')}:")
        print(comparison_markdown(result))
    return 0
