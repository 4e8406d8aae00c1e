"""What the ``hf-soup`` commands share: the ``--token`` and evaluation flags, ``KEY=VALUE`` values, counted nouns."""

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


def add_eval_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--eval-dataset DATASET`` and the repeatable ``-e KEY=VALUE`` evaluation settings."""
    parser.add_argument("--eval-dataset", metavar="DATASET", required=required,
                        help="evaluation data: Hub dataset ID, save_to_disk folder or csv/json/parquet file")
    parser.add_argument("-e", "--eval", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                        help="evaluation setting, e.g. split=test, text_column=sentence, metric=loss; repeatable")


def plural(count: int, noun: str) -> str:
    """``1 ingredient``, ``2 ingredients``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
