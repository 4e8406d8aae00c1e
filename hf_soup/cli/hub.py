"""The Hub commands, ``push`` (:mod:`.push`) and ``card`` (:mod:`.card`), under the name earlier releases used."""

from __future__ import annotations

from .card import add_card_parser, card_command
from .push import add_push_parser, push_command

__all__ = ["add_card_parser", "add_push_parser", "card_command", "push_command"]
