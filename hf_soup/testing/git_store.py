"""A folder of bare git repositories laid out the way olah's ``mirrors-path`` reads them.

Each Hub repo ``org/name`` is a bare repository at ``ROOT/models/org/name``. Commits are
written with git plumbing (a throw-away index, ``commit-tree``, ``update-ref``), so no
working tree exists to drift out of sync with what is served.

>>> store = GitRepoStore(tmp_path)                                  # doctest: +SKIP
>>> sha = store.commit("org/model", {"config.json": b"{}"}, "add config")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Mapping

INITIAL_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_IDENTITY = {
    "GIT_AUTHOR_NAME": "hf-soup test hub",
    "GIT_AUTHOR_EMAIL": "hub@localhost",
    "GIT_COMMITTER_NAME": "hf-soup test hub",
    "GIT_COMMITTER_EMAIL": "hub@localhost",
}


class GitStoreError(RuntimeError):
    """A git command failed, or a revision/branch does not exist."""


class GitRepoStore:
    """Bare model repositories under ``root/models/<org>/<name>``, safe to use from several threads."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.models = self.root / "models"
        self.models.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    def path(self, repo_id: str) -> Path:
        """Where the bare repository of ``repo_id`` lives."""
        org, _, name = repo_id.rpartition("/")
        if not name or ".." in repo_id.split("/"):
            raise GitStoreError(f"invalid repo id {repo_id!r}")
        return self.models / (org or "_") / name

    def exists(self, repo_id: str) -> bool:
        return (self.path(repo_id) / "HEAD").is_file()

    def create(self, repo_id: str) -> str:
        """Create ``repo_id`` with an initial ``.gitattributes`` commit (as the Hub does); return its sha."""
        with self._lock:
            if self.exists(repo_id):
                raise GitStoreError(f"{repo_id} already exists")
            path = self.path(repo_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True, capture_output=True)
            return self.commit(repo_id, {".gitattributes": INITIAL_GITATTRIBUTES}, "initial commit")

    def resolve(self, repo_id: str, revision: str) -> str | None:
        """The commit sha ``revision`` (branch, tag, sha or ``refs/pr/N``) points to, or ``None``."""
        if not self.exists(repo_id) or not revision or revision.startswith("-"):
            return None
        result = self._git(repo_id, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
        return result.stdout.strip() or None

    def is_branch(self, repo_id: str, name: str) -> bool:
        return self._git(repo_id, "show-ref", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        """Point tag ``tag`` at ``revision``; return the sha."""
        sha = self.resolve(repo_id, revision)
        if sha is None:
            raise GitStoreError(f"{repo_id}: no revision {revision!r}")
        self._git(repo_id, "update-ref", f"refs/tags/{tag}", sha)
        return sha

    def set_ref(self, repo_id: str, ref: str, sha: str) -> None:
        """Point the full ref ``ref`` (e.g. ``refs/heads/dev``) at commit ``sha``."""
        self._git(repo_id, "update-ref", ref, sha)

    def files(self, repo_id: str, revision: str = "main") -> list[str]:
        """Paths of every file at ``revision``."""
        return self._git(repo_id, "ls-tree", "-r", "--name-only", revision).stdout.split()

    def size(self, repo_id: str, revision: str, path: str) -> int | None:
        """Size in bytes of one file at ``revision``, or ``None`` when it is not there."""
        result = self._git(repo_id, "cat-file", "-s", f"{revision}:{path}", check=False)
        return int(result.stdout) if result.returncode == 0 else None

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """Content of one file at ``revision``."""
        return subprocess.run(
            ["git", "--git-dir", str(self.path(repo_id)), "cat-file", "blob", f"{revision}:{path}"],
            check=True, capture_output=True,
        ).stdout

    def next_pr_number(self, repo_id: str) -> int:
        refs = self._git(repo_id, "for-each-ref", "--format=%(refname)", "refs/pr/").stdout.split()
        return 1 + max((int(ref.rsplit("/", 1)[1]) for ref in refs), default=0)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        message: str,
        *,
        branch: str = "main",
        ref: str | None = None,
        deletions: Iterable[str] = (),
        replace: bool = False,
        parent: str | None = None,
    ) -> str:
        """Write one commit on ``branch`` (or on the full ``ref``, e.g. ``refs/pr/1``); return its sha.

        ``files`` maps paths in the repo to bytes or to local files. ``deletions`` removes
        files or whole folders; ``replace`` starts from an empty tree instead of the parent's.
        ``parent`` defaults to the branch head.
        """
        ref = ref or f"refs/heads/{branch}"
        with self._lock, tempfile.TemporaryDirectory(prefix="hub-commit-") as scratch:
            env = {**os.environ, **_IDENTITY, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
            if parent is None:
                parent = self.resolve(repo_id, f"refs/heads/{branch}")
            if parent and not replace:
                self._git(repo_id, "read-tree", parent, env=env)
            self._remove(repo_id, deletions, env)
            self._add(repo_id, files, scratch, env)
            tree = self._git(repo_id, "write-tree", env=env).stdout.strip()
            command = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
            sha = self._git(repo_id, *command, env=env).stdout.strip()
            self._git(repo_id, "update-ref", ref, sha)
            return sha

    def commit_folder(self, repo_id: str, folder: str | Path, message: str, *, branch: str = "main") -> str:
        """Commit the content of ``folder`` as the whole tree of ``branch`` (creating the repo if needed)."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        with self._lock:
            if not self.exists(repo_id):
                self.create(repo_id)
            files.setdefault(".gitattributes", INITIAL_GITATTRIBUTES)
            return self.commit(repo_id, files, message, branch=branch, replace=True)

    def _add(self, repo_id: str, files: Mapping[str, bytes | Path], scratch: str, env: dict) -> None:
        if not files:
            return
        sources = []
        for number, (path, content) in enumerate(files.items()):
            if isinstance(content, (bytes, bytearray)):
                source = Path(scratch) / f"blob-{number}"
                source.write_bytes(content)
                content = source
            sources.append(str(content))
        shas = self._git(repo_id, "hash-object", "-w", "--stdin-paths", input="\n".join(sources) + "\n").stdout.split()
        listing = "".join(f"100644 {sha}\t{path}\n" for sha, path in zip(shas, files))
        self._git(repo_id, "update-index", "--add", "--index-info", input=listing, env=env)

    def _remove(self, repo_id: str, deletions: Iterable[str], env: dict) -> None:
        deletions = [d.strip("/") for d in deletions]
        if not deletions:
            return
        present = self._git(repo_id, "ls-files", env=env).stdout.splitlines()
        doomed = [p for p in present if any(p == d or p.startswith(d + "/") for d in deletions)]
        if doomed:  # mode 0 removes an entry; works without a working tree
            listing = "".join(f"0 {'0' * 40}\t{path}\n" for path in doomed)
            self._git(repo_id, "update-index", "--index-info", input=listing, env=env)

    def _git(self, repo_id: str, *args: str, env: dict | None = None, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["git", "--git-dir", str(self.path(repo_id)), *args],
            env=env, input=input, capture_output=True, text=True,
        )
        if check and result.returncode != 0:
            raise GitStoreError(f"git {args[0]} failed for {repo_id}: {result.stderr.strip()}")
        return result
