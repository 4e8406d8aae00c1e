"""Put untrusted names (ingredient paths, dataset and metric names) into Markdown safely.

A name with ``|`` breaks the card's tables, a newline ends a table row, and ``<script>``
would be raw HTML on the Hub page. Text is HTML-escaped and its Markdown punctuation
backslash-escaped; code spans keep the text literal but escape ``|`` (GitHub tables split
cells on it even inside code) and use a backtick fence longer than any run in the name.

>>> md_text("run|<b>1</b>")
'run\\\\|&lt;b&gt;1&lt;/b&gt;'
>>> md_code("/data/run-2")
'`/data/run-2`'
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([\\`*_\[\]()|~#!{}])")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def md_text(value: object) -> str:
    """``value`` as plain Markdown text on one line: no HTML, no formatting, no table breaks."""
    text = _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _PUNCTUATION.sub(r"\\\1", text)


def md_code(value: object) -> str:
    """``value`` as a one-line Markdown code span that no backtick or ``|`` in it can break."""
    text = _one_line(value).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fence_for(text: str) -> str:
    """A code-fence marker longer than any backtick run in ``text`` (so the block cannot be closed early)."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    return "`" * max(3, longest + 1)
