"""``hf-soup push OUTPUT_DIR REPO_ID``: upload a soup folder to a Hub repo in one commit.

    hf-soup push ./soup me/my-soup [--private] [--revision BRANCH] [--create-pr] [--token TOKEN]
"""

from __future__ import annotations

import argparse

from .common import add_token_flag, add_visibility_flags


def add_push_parser(sub) -> argparse.ArgumentParser:
    """Add ``hf-soup push OUTPUT_DIR REPO_ID`` to a sub-parser group."""
    p = sub.add_parser("push", help="push a soup directory to the Hub",
                       description="Upload a soup directory (weights, README.md, report) to a Hub repo in one commit.")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="the folder `hf-soup merge` wrote")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo to create or update, e.g. me/my-soup")
    add_visibility_flags(p, "the repo", " (default: private then)")
    p.add_argument("--regenerate-card", action="store_true",
                   help="replace README.md with hf-soup's card even when it was edited by hand")
    p.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    p.add_argument("--commit-message", help="commit title (default: what the soup is)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    add_token_flag(p, " with write access")
    p.set_defaults(handler=push_command)
    return p


def push_command(args: argparse.Namespace) -> int:
    """Handler of ``hf-soup push``."""
    from ..output.push import push_soup

    url = push_soup(args.output_dir, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                    commit_message=args.commit_message, create_pr=args.create_pr,
                    regenerate_card=args.regenerate_card)
    print(f"Pushed to {url}")
    return 0
