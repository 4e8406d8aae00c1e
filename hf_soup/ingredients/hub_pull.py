"""Download a Hub ingredient (``org/name[@revision]``): only what a soup needs, pinned to a commit.

The revision is resolved to a commit sha first (``model_info``), then exactly the files a
soup reads are fetched at that sha with ``snapshot_download(allow_patterns=...)``: config,
tokenizer / processor files, and one weight format (safetensors when present, ``.bin``
otherwise; for a sharded checkpoint only the shards its index names).

>>> ingredient = pull_ingredient(parse_ref("org/run-1@v2"))  # doctest: +SKIP
>>> ingredient.sha  # doctest: +SKIP
'3f1c...'
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .. import hub_settings
from ..errors import HubError, IngredientAccessError, IngredientError, IngredientNotFoundError, NoWeightsError, RevisionNotFoundError
from .confine import safe_member_name
from .custom_code import folder_code_files
from .files import ADAPTER_PATTERNS, BIN_INDEX, SAFETENSORS_INDEX, is_sidecar
from .ingredient import Ingredient
from .ref import IngredientRef
from .local import resolve_local

logger = logging.getLogger("hf_soup")

_LOGIN_HINT = "log in with `hf auth login`, set HF_TOKEN, or pass --token / token="


def pull_ingredient(
    ref: IngredientRef,
    *,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    **_: Any,
) -> Ingredient:
    """Resolve a Hub ref to a local snapshot and return it as an :class:`Ingredient` with its commit sha.

    Honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` (or ``local_files_only``: the cache only) and
    ``HF_HUB_CACHE`` / ``HF_HOME``. Raises :class:`IngredientNotFoundError`,
    :class:`RevisionNotFoundError`, :class:`IngredientAccessError` or :class:`NoWeightsError`,
    each naming the ref.
    """
    from ..hub_token import check_token

    check_token(token)
    cache = hub_settings.cache_dir(cache_dir)
    if local_files_only or hub_settings.offline():
        return _from_cache(ref, cache)
    from huggingface_hub import HfApi, snapshot_download

    endpoint = hub_settings.endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with translated_errors(ref, endpoint):
            info = api.model_info(ref.name, revision=ref.revision)
            names = [s.rfilename for s in info.siblings or []]

            def fetch(patterns: list[str]) -> Path:
                return Path(snapshot_download(ref.name, revision=info.sha, allow_patterns=patterns, token=token,
                                              cache_dir=cache, endpoint=endpoint))

            files = select_files(names, lambda index: json.loads((fetch([glob.escape(index)]) / index).read_text()), str(ref))
            directory = fetch([glob.escape(name) for name in files])
            code = sorted({f for found in folder_code_files(directory).values() for f in found} & set(names))
            if code:  # custom code auto_map points to: carried into the soup (never imported here)
                files = sorted(set(files) | {safe_member_name(f, f"{ref}: auto_map") for f in code})
                directory = fetch([glob.escape(name) for name in files])
    except _Unreachable as unreachable:
        return _cache_fallback(ref, cache, unreachable)
    _remember_revision(directory, ref.revision or "main", info.sha)
    try:
        ingredient = resolve_local(ref, directory=directory, sha=info.sha)
    except IngredientError as error:  # name the ref, not only the cache folder
        raise type(error)(f"{ref} (commit {info.sha[:12]}): {error}") from None
    ingredient.card_data = _card_data(info)
    logger.info("pulled %s at %s (%d files)", ref, info.sha, len(files))
    return ingredient


def _remember_revision(snapshot: Path, revision: str, sha: str) -> None:
    """Record ``revision -> sha`` in the cache (``refs/<revision>``), so offline runs find the branch or tag.

    The files were fetched at the sha (immune to a branch moving mid-download), which
    huggingface_hub does not record under the branch name itself.
    """
    if revision == sha:
        return
    ref_file = snapshot.parent.parent / "refs" / revision
    try:
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(sha)
    except OSError as error:  # a read-only cache still works online
        logger.debug("could not record %s -> %s in the cache: %s", revision, sha, error)


def select_files(names: Sequence[str], read_index: Callable[[str], dict], ref: str = "") -> list[str]:
    """The repo files a soup needs, from the repo's file list (``read_index`` loads an index file).

    One weight format only: a safetensors index and the shards it names, ``model.safetensors``,
    other top-level ``*.safetensors``, then the same for ``pytorch_model*.bin``; adapters when
    nothing else. Config, tokenizer and processor files come along. Only top-level files.
    """
    top = [n for n in names if "/" not in n]
    weights = (
        _indexed(top, SAFETENSORS_INDEX, read_index, ref)
        or (["model.safetensors"] if "model.safetensors" in top else [])
        or [n for n in top if n.endswith(".safetensors") and not n.startswith("adapter_model")]
        or _indexed(top, BIN_INDEX, read_index, ref)
        or (["pytorch_model.bin"] if "pytorch_model.bin" in top else [])
        or [n for n in top if any(fnmatch.fnmatch(n, p) for p in ADAPTER_PATTERNS)]
    )
    if not weights:
        shown = ", ".join(sorted(names)[:12]) or "no files"
        raise NoWeightsError(
            f"{ref}: the repo holds no model weights ({shown}); a soup needs model.safetensors, sharded "
            f"*.safetensors with {SAFETENSORS_INDEX}, or pytorch_model.bin — check the repo ID and revision"
        )
    return sorted(set(weights) | {n for n in top if is_sidecar(n)})


def _indexed(top: list[str], index: str, read_index: Callable[[str], dict], ref: str = "") -> list[str]:
    if index not in top:
        return []
    try:
        shards = set(read_index(index)["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return [index]  # a broken index: resolve_local reports it with the local path
    # refused before any download: a shard named ../../x or /x would be read from outside the snapshot
    return [index, *sorted(safe_member_name(name, f"{ref}: {index}") for name in shards)]


def _card_data(info: Any) -> dict[str, Any]:
    """What the soup's model card takes from an ingredient: license, pipeline tag, library, datasets."""
    card = info.card_data.to_dict() if getattr(info, "card_data", None) is not None else {}
    return {
        "license": card.get("license"),
        "pipeline_tag": getattr(info, "pipeline_tag", None) or card.get("pipeline_tag"),
        "library_name": getattr(info, "library_name", None) or card.get("library_name"),
        "datasets": card.get("datasets"),
        "private": bool(getattr(info, "private", False)),
    }


# -- errors ------------------------------------------------------------------------------------------
class _Unreachable(Exception):
    """The endpoint could not be reached (network error); the cache may still serve the ref."""


@contextlib.contextmanager
def translated_errors(ref: IngredientRef, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into hf_soup's, naming the ref and what to do next."""
    from huggingface_hub import errors as hf

    repo = ref.name
    try:
        yield
    except hf.GatedRepoError:
        raise IngredientAccessError(
            f"{ref}: {repo} is a gated repo and this account has no access yet; request access at "
            f"{endpoint}/{repo}, then {_LOGIN_HINT}"
        ) from None
    except hf.RepositoryNotFoundError:
        raise IngredientNotFoundError(
            f"{ref}: no model repo {repo} on {endpoint}; check the spelling — if it is private, {_LOGIN_HINT} "
            "with a token that can read it"
        ) from None
    except hf.RevisionNotFoundError:
        raise RevisionNotFoundError(
            f"{ref}: {repo} has no branch, tag or commit {ref.revision!r}; see the repo's branches and tags "
            f"at {endpoint}/{repo} and fix the part after '@'"
        ) from None
    except hf.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise IngredientAccessError(
                f"{ref}: the Hub refused the token for {repo} (HTTP {status}); {_LOGIN_HINT} with a valid token "
                "that can read this repo"
            ) from None
        if status is not None and status >= 500:
            raise HubError(f"{ref}: {endpoint} answered HTTP {status}; try again later") from None
        raise HubError(f"{ref}: the Hub request failed (HTTP {status}); check the repo ID and try again") from None
    except hf.LocalEntryNotFoundError as error:  # snapshot_download lost the connection, nothing cached
        raise _Unreachable(_first_line(error)) from None
    except hf.OfflineModeIsEnabled:
        raise _Unreachable("offline mode is enabled") from None
    except (ConnectionError, TimeoutError) as error:
        raise _Unreachable(type(error).__name__) from None
    except Exception as error:  # httpx transport errors (connection refused, DNS, timeouts)
        if type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore") and "Error" in type(error).__name__:
            raise _Unreachable(type(error).__name__) from None
        raise


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _from_cache(ref: IngredientRef, cache: str | None) -> Ingredient:
    """Offline: the cached snapshot of ``ref`` (a branch or tag the cache recorded, or a sha)."""
    from huggingface_hub import constants

    storage = Path(cache or constants.HF_HUB_CACHE) / f"models--{ref.name.replace('/', '--')}"
    revision = ref.revision or "main"
    ref_file = storage / "refs" / revision
    sha = ref_file.read_text().strip() if ref_file.is_file() else _full_sha(storage / "snapshots", revision)
    snapshot = storage / "snapshots" / sha
    if not snapshot.is_dir():
        raise IngredientNotFoundError(
            f"{ref}: not in the local Hub cache ({storage.parent}) and offline mode is on "
            "(HF_HUB_OFFLINE=1); run once with network access, or pass the model's local folder"
        )
    return resolve_local(ref, directory=snapshot, sha=sha)


def _full_sha(snapshots: Path, revision: str) -> str:
    """The cached commit a short sha names (when exactly one snapshot starts with it), else ``revision``."""
    if not (7 <= len(revision) < 40 and all(c in "0123456789abcdef" for c in revision)) or not snapshots.is_dir():
        return revision
    matches = [p.name for p in snapshots.iterdir() if p.name.startswith(revision)]
    return matches[0] if len(matches) == 1 else revision


def _cache_fallback(ref: IngredientRef, cache: str | None, reason: _Unreachable) -> Ingredient:
    try:
        ingredient = _from_cache(ref, cache)
    except IngredientNotFoundError:
        raise HubError(
            f"{ref}: cannot reach {hub_settings.endpoint()} ({reason}) and the ref is not in the local cache; "
            "check the network or HF_ENDPOINT, then retry"
        ) from None
    logger.warning("%s: the Hub is unreachable (%s); using the cached snapshot %s", ref, reason, ingredient.sha)
    return ingredient
