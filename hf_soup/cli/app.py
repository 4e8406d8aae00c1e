"""The ``hf-soup`` parser and entry point: each sub-command from its module, every failure as one line."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..errors import HfSoupError, RecipeError
from .card import add_card_parser
from .demo import add_demo_parser
from .evaluate import add_evaluate_parser
from .inspect import add_inspect_parser
from .merge import add_merge_parser
from .methods import add_methods_parser
from .push import add_push_parser


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-soup`` parser with its sub-commands, in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(prog="hf-soup", description="Model soups from Hugging Face checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what hf_soup does")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_merge_parser, add_inspect_parser, add_evaluate_parser, add_methods_parser, add_push_parser,
                add_card_parser, add_demo_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, 1 for other failures, 130 / 143 when stopped).

    Every failure is one line on stderr; the traceback of an unexpected one is shown with ``-v``.
    """
    from ..hard_stop import Terminated, sigterm_as_interrupt
    from ..hub_token import redact
    from ..io.os_errors import describe

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    def say(message: str) -> None:  # a token never reaches the terminal, whatever an error quotes
        print(redact(f"hf-soup: {message}", getattr(args, "token", None)), file=sys.stderr)

    try:
        with sigterm_as_interrupt():
            return args.handler(args)
    except RecipeError as error:
        say(f"error: {error}")
        return 2
    except HfSoupError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        say(f"{'terminated' if terminated else 'interrupted'}; an unfinished soup is never left in the output directory")
        return 143 if terminated else 130
    except OSError as error:
        if describe(error) is None and args.verbose:
            raise
        say(f"error: {describe(error) or _one_line(error)}")
        return 1
    except Exception as error:
        if args.verbose:
            raise
        say(f"error: unexpected {_one_line(error)}; rerun with -v for the traceback, and please report it")
        return 1


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
