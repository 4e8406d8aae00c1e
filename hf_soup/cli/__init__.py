"""The ``hf-soup`` command (also ``python -m hf_soup``): one module per sub-command.

    hf-soup merge -m ./run1 -m ./run2 --method uniform -o ./soup     # merge
    hf-soup merge recipe.yaml --dtype bfloat16
    hf-soup inspect ./run1 ./run2 --json                             # inspect
    hf-soup evaluate ./run1 ./run2 --eval-dataset ./val.csv          # evaluate (+ the logit ensemble)
    hf-soup methods                                                  # methods
    hf-soup push ./soup me/my-soup                                   # push
    hf-soup card ./soup                                              # card
    hf-soup demo                                                     # demo

:mod:`.app` builds the parser and runs a command; :mod:`.common` holds the flags they share.
"""

from __future__ import annotations

from .app import build_parser, main
from .common import add_token_flag
from .evaluate import evaluate_command
from .inspect import inspect_command
from .merge import merge_command
from .methods import methods_command

__all__ = ["add_token_flag", "build_parser", "evaluate_command", "inspect_command", "main", "merge_command",
           "methods_command"]
