"""``hf-soup card OUTPUT_DIR``: (re)write a soup's README.md model card from its soup_report.json.

    hf-soup card ./soup [--template my_card.md] [--repo-id me/my-soup]
"""

from __future__ import annotations

import argparse


def add_card_parser(sub) -> argparse.ArgumentParser:
    """Add ``hf-soup card OUTPUT_DIR`` to a sub-parser group."""
    p = sub.add_parser("card", help="(re)write a soup's README.md model card",
                       description="Render README.md from the soup_report.json of a soup directory.")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="the folder `hf-soup merge` wrote")
    p.add_argument("--template", help="your own Jinja Markdown template (default: hf-soup's)")
    p.add_argument("--repo-id", help="the Hub repo the card names in its loading example")
    p.set_defaults(handler=card_command)
    return p


def card_command(args: argparse.Namespace) -> int:
    """Handler of ``hf-soup card``."""
    from ..output.card import write_card

    path = write_card(args.output_dir, args.template, repo_id=args.repo_id)
    print(f"Model card written to {path}")
    return 0

