"""What the ``hf-soup`` commands share: ``--token``, visibility and evaluation flags, ``KEY=VALUE``, counted nouns."""

from __future__ import annotations

import argparse
from typing import Any


def add_token_flag(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """The ``--token`` flag every Hub-facing command takes (``purpose``: e.g. " with write access")."""
    parser.add_argument("--token", help=f"Hub token{purpose} (default: HF_TOKEN or the stored login)")


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as ``(key, value parsed as YAML)``; an argparse error otherwise."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def add_visibility_flags(parser: argparse.ArgumentParser, repo: str, public_note: str = "") -> None:
    """``--private`` / ``--public`` (one or neither; ``args.private`` is ``None`` when neither is given)."""
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", action="store_true", default=None, help=f"create {repo} as private")
    visibility.add_argument("--public", dest="private", action="store_false", default=None,
                            help=f"create {repo} as public even when ingredients are private{public_note}")


def add_eval_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--eval-dataset DATASET`` and the repeatable ``-e KEY=VALUE`` evaluation settings."""
    parser.add_argument("--eval-dataset", metavar="DATASET", required=required,
                        help="evaluation data: Hub dataset ID, save_to_disk folder or csv/json/parquet file")
    parser.add_argument("-e", "--eval", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                        help="evaluation setting, e.g. split=test, text_column=sentence, metric=loss; repeatable")


def plural(count: int, noun: str) -> str:
    """``1 ingredient``, ``2 ingredients``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
