"""Push a soup directory to the Hub: create the repo if needed, then one commit with every file.

>>> push_soup("./soup", "me/my-soup", private=True)  # doctest: +SKIP
'https://huggingface.co/me/my-soup/commit/8d1f...'

The local directory is never modified except for ``README.md``, which is (re)rendered with
the repo ID when it is missing or was rendered from the default template.

Pushing over an older soup deletes, in the same commit, the files of the old soup that the new
one does not have (weights, shard index, ``config.json``, ``adapter_config.json``): a stale
shard index or adapter file would otherwise make the repo load the old soup. Other files
(a LICENSE, extra documentation) are kept.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from .. import hub_settings
from ..errors import HfSoupError, HubError

logger = logging.getLogger("hf_soup")

# Remote files a soup consists of; those the new soup lacks are deleted by a push.
_SOUP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")
_SOUP_NAMES = frozenset({"config.json", "adapter_config.json", "soup_report.json"})


def stale_soup_files(remote: list[str], local: set[str]) -> list[str]:
    """The remote files of an older soup that the new soup (``local`` paths) does not replace."""
    return sorted(name for name in remote if name not in local and "/" not in name  # a soup is flat
                  and (name in _SOUP_NAMES or name.endswith(_SOUP_SUFFIXES)))


def _remote_state(api, repo_id: str, revision: str | None) -> tuple[list[str], str | None, bool | None]:
    """The files at ``revision`` of ``repo_id``, its commit and the repo's visibility (``[], None, None`` when empty)."""
    from huggingface_hub import errors as hf

    try:
        info = api.model_info(repo_id, revision=revision or "main")
    except (hf.RevisionNotFoundError, hf.EntryNotFoundError):
        return [], None, None
    return [s.rfilename for s in (info.siblings or [])], info.sha, info.private


def soup_files(output_dir: Path) -> list[Path]:
    """The files of a soup directory to upload: everything except hidden files and folders."""
    return sorted(
        p for p in output_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(output_dir).parts)
    )


def retry_command(output_dir: Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                  create_pr: bool = False) -> str:
    """The ``hf-soup push`` command that repeats this push."""
    parts = ["hf-soup", "push", str(output_dir), repo_id]
    if private:
        parts.append("--private")
    elif private is False:
        parts.append("--public")
    if revision:
        parts += ["--revision", revision]
    if create_pr:
        parts.append("--create-pr")
    return shlex.join(parts)


def _prepare_card(output_dir: Path, repo_id: str, regenerate: bool = False) -> None:
    """Render README.md with the repo ID when hf-soup owns it: absent, or exactly as hf-soup rendered it.

    A README that differs from the card hf-soup rendered (its hash is in the report) was
    edited by hand, and is pushed as it is unless ``regenerate``. The custom template a card
    was made with is not known here, so only default-template cards are re-rendered.
    """
    from .card import card_edited, is_default_card, write_card

    readme = output_dir / "README.md"
    if not readme.exists() or regenerate:
        write_card(output_dir, repo_id=repo_id)
    elif card_edited(output_dir) is False and is_default_card(readme):
        write_card(output_dir, repo_id=repo_id)
    else:
        logger.info("README.md of %s was edited (or not rendered by hf-soup): pushed as it is; pass "
                    "--regenerate-card (regenerate_card=True) to replace it with hf-soup's card", output_dir)


def _private_ingredients(output_dir: Path) -> list[str]:
    """The repo IDs of the soup's ingredients that were private repos (from its report)."""
    from .report import read_report

    rows = read_report(output_dir).get("ingredients") or []
    return [str(row.get("repo_id") or row.get("ref")) for row in rows if isinstance(row, dict) and row.get("private")]


def _default_message(output_dir: Path) -> str:
    from .report import REPORT_FILE, read_report

    if not (output_dir / REPORT_FILE).is_file():
        return "Upload soup with hf-soup"
    report = read_report(output_dir)
    count = sum(1 for row in report.get("ingredients", []) if row.get("kept", True))
    return f"Add {report.get('method', 'model')} soup of {count} ingredients (hf-soup {report.get('hf_soup_version', '')})".strip()


def push_soup(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    regenerate_card: bool = False,
) -> str:
    """Upload ``output_dir`` to ``repo_id`` in one commit; return the commit URL (the PR URL with ``create_pr``).

    The repo is created when missing (``private`` applies then; by default it is private when
    any ingredient is a private repo, ``private=False`` makes it public anyway). README.md is
    re-rendered with the repo ID unless it was edited by hand (``regenerate_card`` forces it). ``revision`` is the branch to
    commit to (default ``main``, created when missing). On failure the local soup stays
    complete and :class:`HubError` gives the ``hf-soup push`` command that retries.
    """
    from ..compat.versions import check_installed

    check_installed("huggingface_hub")
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub import errors as hf

    from ..hub_token import check_token

    check_token(token)
    output_dir = Path(output_dir)
    if not output_dir.is_dir() or not any(output_dir.glob("*.safetensors")):
        raise HubError(f"{output_dir}: not a soup directory (no *.safetensors); run `hf-soup merge` first")
    if not (output_dir / "soup_report.json").is_file():
        raise HubError(f"{output_dir}: not a soup directory (no soup_report.json, so no model card can say what it "
                       "is); push soups written by `hf-soup merge`, or plain checkpoints with `hf upload`")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a valid Hub repo ID ({error}); use 'user/name' or 'org/name'") from None
    secret = _private_ingredients(output_dir)
    chosen = private is not None
    if secret and private is None:
        private = True
        logger.warning("%s is private because ingredient(s) %s are private repos its card names; pass --public "
                       "(private=False) to make it public", repo_id, ", ".join(secret))
    retry = retry_command(output_dir, repo_id, private=private, revision=revision, create_pr=create_pr)
    endpoint = hub_settings.endpoint()
    if hub_settings.offline():
        raise HubError(f"cannot push {output_dir}: offline mode is on (HF_HUB_OFFLINE); unset it and run: {retry}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        _prepare_card(output_dir, repo_id, regenerate_card)
        operations = [CommitOperationAdd(p.relative_to(output_dir).as_posix(), str(p)) for p in soup_files(output_dir)]
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not create_pr and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        remote, parent, is_private = _remote_state(api, repo_id, revision)
        if private and is_private is False and not chosen:
            raise HubError(
                f"{repo_id} is public, and ingredient(s) {', '.join(secret)} of this soup are private repos that its "
                "card and metadata name; nothing was pushed. Push to a private repo, or pass --public "
                "(private=False) to publish their names"
            )
        if private and is_private is False:  # create_repo(exist_ok=True) keeps an existing repo's visibility
            raise HubError(
                f"{repo_id} already exists and is public, so --private (private=True) cannot apply; nothing was "
                f"pushed. Make the repo private in its settings on {endpoint}, or push to a new repo ID"
            )
        stale = stale_soup_files(remote, {op.path_in_repo for op in operations})
        if stale:
            logger.info("removing %d files of the previous soup from %s: %s", len(stale), repo_id, ", ".join(stale))
        operations += [CommitOperationDelete(name) for name in stale]
        info = api.create_commit(repo_id, operations, commit_message=commit_message or _default_message(output_dir),
                                 revision=revision, create_pr=create_pr, parent_commit=parent)
    except HfSoupError:
        raise
    except hf.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        hint = {401: "the Hub refused the token: log in with `hf auth login`, set HF_TOKEN or pass --token",
                403: "the token may not write to this namespace: use a token with write access",
                404: "the repo or branch was not found: check the repo ID and --revision"}.get(status, "")
        raise HubError(
            f"pushing {output_dir} to {repo_id} on {endpoint} failed (HTTP {status}){'; ' + hint if hint else ''}. "
            f"The soup is complete at {output_dir}; retry with: {retry}"
        ) from None
    except Exception as error:  # network errors (httpx), invalid card metadata (ValueError), disk errors
        if not isinstance(error, (OSError, ValueError)) and not _is_transport_error(error):
            raise
        raise HubError(
            f"pushing {output_dir} to {repo_id} on {endpoint} failed ({type(error).__name__}: {_first_line(error)}). "
            f"The soup is complete at {output_dir}; retry with: {retry}"
        ) from None
    url = info.pr_url or info.commit_url
    logger.info("pushed %s to %s", output_dir, url)
    return url


def _is_transport_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]
