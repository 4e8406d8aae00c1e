"""Pytest fixtures for a local Hugging Face Hub (olah for reads + hf_soup's write server).

Use them with ``pytest_plugins = ["hub_fixtures"]`` in ``tests/conftest.py``, or import the
fixtures into a test module. One hub serves the whole session (start-up ~1 s); each test gets
``HF_ENDPOINT`` pointed at it, its own ``HF_HOME`` / cache, and no ambient token.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable

import pytest

from hf_soup.testing.hub_server import LocalHub

WRITE_TOKEN = "hf_soupTESTwriteTOKEN0123456789abcdef"
READ_TOKEN = "hf_soupTESTreadTOKEN0123456789abcdef"
_names = itertools.count()


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory) -> LocalHub:
    """The session's hub (not yet wired into the environment: use ``hub``)."""
    hub = LocalHub(tmp_path_factory.mktemp("local-hub"), token=WRITE_TOKEN, read_token=READ_TOKEN).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(local_hub: LocalHub, tmp_path: Path, monkeypatch) -> LocalHub:
    """The local hub as the process's Hub: ``HF_ENDPOINT``, a fresh ``HF_HOME``, no token from the machine."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", local_hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub froze these at import time; point them here too for code that reads them.
    monkeypatch.setattr(constants, "ENDPOINT", local_hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", local_hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return local_hub


@pytest.fixture
def repo_name() -> Callable[[str], str]:
    """``repo_name("run")`` -> a repo ID no other test uses (the hub lives for the session)."""
    return lambda stem="model", org="soup-org": f"{org}/{stem}-{next(_names)}"


def save_tiny(path: Path, seed: int, arch: str = "bert", *, card: dict | None = None, **overrides) -> Path:
    """Save a tiny seeded model with ``save_pretrained`` (plus a README with ``card`` metadata)."""
    from conftest import build_model

    build_model(arch, seed, **overrides).save_pretrained(path)
    if card is not None:
        import yaml

        (path / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n\nA tiny test model.\n")
    return path


@pytest.fixture
def publish_model(hub: LocalHub, tmp_path: Path, repo_name) -> Callable[..., tuple[str, str]]:
    """``publish_model(seed, arch="bert", repo_id=None, **publish_options)`` -> ``(repo_id, sha)``."""

    def publish(seed: int = 0, arch: str = "bert", repo_id: str | None = None, card: dict | None = None,
                **options) -> tuple[str, str]:
        repo_id = repo_id or repo_name(f"{arch}-{seed}")
        folder = save_tiny(tmp_path / "published" / repo_id.replace("/", "--") / str(seed), seed, arch, card=card)
        return repo_id, hub.publish(folder, repo_id, **options)

    return publish


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
