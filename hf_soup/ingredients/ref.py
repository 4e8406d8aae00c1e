"""Parse what a user wrote as an ingredient into an :class:`IngredientRef`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import IngredientNotFoundError, RecipeError

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class IngredientRef:
    """A parsed reference.

    ``kind`` is ``"local"`` (a directory or a file), ``"hub"`` (``org/name[@revision]``)
    or ``"state_dict"`` (an in-memory mapping, Python API only).
    """

    kind: str
    name: str
    revision: str | None = None
    state_dict: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        if self.kind == "hub" and self.revision:
            return f"{self.name}@{self.revision}"
        return self.name


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is written as a filesystem path rather than a repo ID."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text


def parse_ref(value: Any, revision: str | None = None, index: int = 0) -> IngredientRef:
    """Parse a string, path, ``{"model": ..., "revision": ...}`` mapping or state dict.

    >>> parse_ref("org/model@v1")
    IngredientRef(kind='hub', name='org/model', revision='v1', state_dict=None)
    """
    if isinstance(value, Mapping) and "model" not in value:
        return IngredientRef("state_dict", f"<state dict {index}>", state_dict=value)
    if isinstance(value, Mapping):
        return parse_ref(value["model"], value.get("revision"), index)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"ingredients[{index}]: expected a repo ID, a path or a state dict, got {value!r}")
    text = value.strip()
    local = Path(text).expanduser()
    if local.exists():
        if revision:
            raise RecipeError(f"ingredients[{index}]: {text} is a local path; a revision applies to Hub repos only")
        return IngredientRef("local", str(local))
    name, _, at_revision = text.partition("@")
    if looks_like_path(name) or not _REPO_ID.match(name):  # a branch name may hold slashes
        raise IngredientNotFoundError(
            f"ingredients[{index}]: {text!r} is neither an existing path nor a Hub repo ID "
            "(org/name or org/name@revision); check the spelling"
        )
    if at_revision and revision and at_revision != revision:
        raise RecipeError(f"ingredients[{index}]: {text!r} names revision {at_revision!r} but revision: {revision!r} was also given")
    return IngredientRef("hub", name, revision=at_revision or revision)
