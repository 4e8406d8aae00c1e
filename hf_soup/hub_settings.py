"""Hub settings read when a call is made, not when ``huggingface_hub`` was imported.

``huggingface_hub.constants`` freezes ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache
location at import time; reading the environment here lets a process (a notebook, the demo,
a test) point hf_soup at another endpoint after ``import transformers``.

>>> endpoint()  # doctest: +SKIP
'https://huggingface.co'
"""

from __future__ import annotations

import os

_TRUE = {"1", "on", "yes", "true"}


def endpoint() -> str:
    """The Hub URL: ``HF_ENDPOINT`` if set, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for the local cache only."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value.strip().lower() in _TRUE if value is not None else bool(constants.HF_HUB_OFFLINE)


def cache_dir(explicit: str | os.PathLike | None = None) -> str | None:
    """The Hub cache: ``explicit``, ``HF_HUB_CACHE``, ``$HF_HOME/hub``, or ``None`` for the library default."""
    if explicit is not None:
        return os.fspath(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def repo_url(repo_id: str) -> str:
    """The web address of a model repo on the current endpoint."""
    return f"{endpoint()}/{repo_id}"
