"""Check a Hub token before it is sent, and never show it.

A token pasted with a trailing newline or a space makes the HTTP library fail with an error
that quotes the whole header (token included), after work was done. It is refused first, by
a message that says what is wrong with it without echoing any of it.

>>> check_token("hf_abcdefghijklmnopqrstuvwxyz0123456789")
>>> check_token(None)  # the stored login or HF_TOKEN: huggingface_hub reads (and cleans) it
"""

from __future__ import annotations

import re

from .errors import TokenError

_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=]+")


def _flaw(token: str) -> str | None:
    if not token:
        return "it is empty"
    if _TOKEN.fullmatch(token):
        return None
    if "\n" in token or "\r" in token:
        return "it contains a line break (copied with a newline at the end?)"
    if any(c.isspace() for c in token):
        return "it contains whitespace (a space or tab)"
    if any(ord(c) < 32 or ord(c) == 127 for c in token):
        return "it contains a control character"
    if any(ord(c) > 127 for c in token):
        return "it contains a non-ASCII character"
    return "it contains a character Hub tokens do not have (quotes or punctuation)"


def check_token(token: object, source: str = "the token given with --token (token=)") -> None:
    """Raise :class:`TokenError` for a malformed token; ``None`` / ``True`` / ``False`` pass unchecked."""
    if token is None or isinstance(token, bool):
        return
    if not isinstance(token, str):
        raise TokenError(f"{source} must be a string, not {type(token).__name__}")
    flaw = _flaw(token)
    if flaw:
        raise TokenError(f"{source} is malformed: {flaw}; nothing was sent. Tokens are letters, digits and '_-.'; "
                         "copy it again from your Hub settings (Access Tokens) or log in with `hf auth login`")


def redact(text: str, token: object) -> str:
    """``text`` with every occurrence of ``token`` (and of its stripped form) replaced by ``hf_***``."""
    if not isinstance(token, str) or not token.strip():
        return text
    for secret in {token, token.strip()}:
        if len(secret) >= 4:
            text = text.replace(secret, "hf_***")
    return text
