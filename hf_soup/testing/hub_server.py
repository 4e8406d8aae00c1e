"""A local Hugging Face Hub for tests and the offline demo: olah for reads, this server for writes.

One endpoint (``LocalHub.endpoint``, to use as ``HF_ENDPOINT``) answers what the real
``huggingface_hub`` client calls:

- writes, handled here: ``POST /api/repos/create``, ``/api/validate-yaml``,
  ``/api/models/{repo}/preupload/{rev}`` (every file ``regular``) and
  ``/api/models/{repo}/commit/{rev}`` (NDJSON with base64 files), ``GET /api/whoami-v2``;
  each commit becomes a git commit in olah's mirrors folder;
- reads: forwarded to olah, after the checks the Hub makes first (token, private and
  gated repos, missing repo / revision / file), answered with the Hub's ``X-Error-Code``.

>>> with LocalHub(tmp_path, token="hf_test") as hub:           # doctest: +SKIP
...     sha = hub.publish("./tiny-model", "org/tiny")
...     os.environ["HF_ENDPOINT"] = hub.endpoint

Tokens are compared, never stored in files or logged.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .git_store import GitRepoStore, GitStoreError
from .olah_process import OlahProcess

DEFAULT_TOKEN = "hf_soup_local_test_token"
DEFAULT_USER = "soup-tester"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
               "proxy-authenticate", "trailer", "server", "date"}
_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>[a-z-]+)(?:/(?P<rev>[^/]+))?(?P<rest>/.*)?)?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_REVISIONED = {"revision", "tree", "paths-info", "commits"}


@dataclass
class HubState:
    """What the front server knows beyond the git repos: tokens, visibility, request log."""

    store: GitRepoStore
    token: str
    read_token: str | None
    user: str
    olah_netloc: str = ""
    public_netloc: str = ""
    private: set[str] = field(default_factory=set)
    gated: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://{self.public_netloc}"


class _Reply(Exception):
    """Raised inside a handler to answer at once with a status, JSON body and headers."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _error(status: int, message: str, code: str | None = None) -> _Reply:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return _Reply(status, {"error": message}, headers)


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request: writes and checks here, every other read to olah."""

    protocol_version = "HTTP/1.0"
    server_version = "hf-soup-local-hub"
    state: HubState  # set on the subclass built by LocalHub

    # -- plumbing ---------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # quiet; the request log is in state
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        with self.state.lock:
            self.state.requests.append((self.command, url.path))
        try:
            self._route(url.path, parse_qs(url.query))
        except _Reply as reply:
            self._send_json(reply.status, reply.body, reply.headers)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- authentication -----------------------------------------------------------------------
    def _auth(self) -> str | None:
        """``"write"``, ``"read"`` or ``None`` (anonymous); a wrong token is refused at once, as on the Hub."""
        header = self.headers.get("Authorization") or ""
        if not header:
            return None
        given = header.removeprefix("Bearer ").strip()
        if given == self.state.token:
            return "write"
        if self.state.read_token and given == self.state.read_token:
            return "read"
        raise _error(401, "Invalid credentials in Authorization header")

    def _need_write(self, access: str | None, what: str) -> None:
        if access is None:
            raise _error(401, f"You must be authenticated to {what}")
        if access != "write":
            raise _error(403, f"You don't have the rights to {what}: this token is read-only")

    # -- routing --------------------------------------------------------------------------------
    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        access = self._auth()
        if path == "/api/agent-harnesses":
            raise _error(404, "Not found")
        if path == "/api/whoami-v2":
            return self._whoami(access)
        if path == "/api/validate-yaml" and self.command == "POST":
            return self._validate_yaml()
        if path == "/api/repos/create" and self.command == "POST":
            return self._create_repo(access)
        match = _API_REPO.match(path)
        if match:
            return self._api_repo(match, access, query)
        match = _RESOLVE.match(path)
        if match:
            repo, rev = match["repo"], unquote(match["rev"])
            self._check_read(repo, access, download=True)
            sha = self._check_revision(repo, rev)
            size = self.state.store.size(repo, sha, unquote(match["path"]))
            if size is None:
                raise _error(404, f"Entry not found: {unquote(match['path'])}", "EntryNotFound")
            return self._forward(path, size=size)
        raise _error(404, f"Not found: {path}")

    def _api_repo(self, match: re.Match, access: str | None, query: dict) -> None:
        repo, action, rev = match["repo"], match["action"], unquote(match["rev"] or "")
        if self.command == "POST" and action == "preupload":
            return self._preupload(repo, access)
        if self.command == "POST" and action == "commit":
            return self._commit(repo, rev, access, query)
        if self.command == "POST" and action == "branch":
            return self._create_branch(repo, rev, access)
        self._check_read(repo, access, download=False)
        if action is None:  # olah serves repo info only per revision
            return self._forward(f"/api/models/{repo}/revision/main", patch_info=repo)
        target = self.path
        if action in _REVISIONED and rev:  # olah knows neither short shas nor branch names with '/'
            sha = self._check_revision(repo, rev)
            query_string = urlsplit(self.path).query
            target = f"/api/models/{repo}/{action}/{sha}{match['rest'] or ''}" + (f"?{query_string}" if query_string else "")
        return self._forward(target, patch_info=repo if action == "revision" else None)

    # -- checks the Hub makes before serving ------------------------------------------------------
    def _check_read(self, repo: str, access: str | None, *, download: bool) -> None:
        state = self.state
        hidden = repo in state.private and access is None
        if not state.store.exists(repo) or hidden:
            # The Hub answers 401 to anonymous callers and 404 to authenticated ones.
            raise _error(401 if access is None else 404, "Repository not found", "RepoNotFound")
        if download and repo in state.gated and access is None:
            raise _error(401, f"Access to model {repo} is restricted. You must have access to it and be "
                              "authenticated to access it. Please log in.", "GatedRepo")

    def _check_revision(self, repo: str, rev: str) -> str:
        sha = self.state.store.resolve(repo, rev)
        if sha is None:
            raise _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha

    # -- writes ---------------------------------------------------------------------------------------
    def _whoami(self, access: str | None) -> None:
        if access is None:
            raise _error(401, "Invalid credentials in Authorization header")
        self._send_json(200, {
            "type": "user", "name": self.state.user, "fullname": "hf-soup tester", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local test token", "role": access}},
        })

    def _validate_yaml(self) -> None:
        import yaml

        content = json.loads(self._body() or b"{}").get("content", "")
        front = re.match(r"^\s*---\n(.*?)\n---", content, flags=re.S)
        try:
            metadata = yaml.safe_load(front.group(1)) if front else {}
        except yaml.YAMLError as error:
            raise _Reply(400, {"errors": [{"message": f"invalid YAML: {error}"}]}) from None
        if metadata is not None and not isinstance(metadata, dict):
            raise _Reply(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._send_json(200, {"errors": [], "warnings": []})

    def _create_repo(self, access: str | None) -> None:
        self._need_write(access, "create a repo")
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") != "model":
            raise _error(400, "this local hub stores model repos only")
        repo = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        url = f"{self.state.endpoint}/{repo}"
        try:
            self.state.store.create(repo)
        except GitStoreError:
            raise _Reply(409, {"error": "You already created this model repo", "url": url}) from None
        if payload.get("visibility") == "private" or payload.get("private"):
            self.state.private.add(repo)
        self._send_json(200, {"url": url, "name": repo, "id": repo})

    def _writable(self, repo: str, access: str | None) -> None:
        self._need_write(access, f"write to {repo}")
        if not self.state.store.exists(repo):
            raise _error(404, "Repository not found", "RepoNotFound")

    def _create_branch(self, repo: str, branch: str, access: str | None) -> None:
        self._writable(repo, access)
        start = json.loads(self._body() or b"{}").get("startingPoint") or "main"
        if self.state.store.is_branch(repo, branch):
            raise _error(409, f"Branch {branch} already exists")
        sha = self._check_revision(repo, start)
        self.state.store.set_ref(repo, f"refs/heads/{branch}", sha)
        self._send_json(200, {"success": True})

    def _preupload(self, repo: str, access: str | None) -> None:
        self._writable(repo, access)
        files = json.loads(self._body() or b"{}").get("files", [])
        self._send_json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                        for f in files]})

    def _commit(self, repo: str, rev: str, access: str | None, query: dict) -> None:
        self._writable(repo, access)
        header, files, deletions = self._parse_commit(self._body())
        store = self.state.store
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
        if not store.is_branch(repo, rev):
            raise _error(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
        head = store.resolve(repo, rev)
        parent = header.get("parentCommit")
        if parent and not create_pr and store.resolve(repo, parent) != head:
            raise _error(412, f"A commit has happened since {parent}; {rev} is at {head}")
        message = header.get("summary") or "Upload files"
        if header.get("description"):
            message += "\n\n" + header["description"]
        base = store.resolve(repo, parent) if parent else head
        number = store.next_pr_number(repo) if create_pr else None
        ref = f"refs/pr/{number}" if create_pr else None
        sha = store.commit(repo, files, message, branch=rev, ref=ref, deletions=deletions, parent=base)
        body = {"success": True, "commitOid": sha, "commitUrl": f"{self.state.endpoint}/{repo}/commit/{sha}",
                "hookOutput": ""}
        if create_pr:
            body["pullRequestUrl"] = f"{self.state.endpoint}/{repo}/discussions/{number}"
        self._send_json(200, body)

    @staticmethod
    def _parse_commit(body: bytes) -> tuple[dict, dict[str, bytes], list[str]]:
        header: dict = {}
        files: dict[str, bytes] = {}
        deletions: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _error(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append(value["path"])
            else:
                raise _error(422, f"this local hub takes regular files only, not {key!r}")
        return header, files, deletions

    # -- forwarding to olah -----------------------------------------------------------------------
    def _forward(self, target: str, patch_info: str | None = None, size: int | None = None) -> None:
        """Send the request to olah and stream its answer back (HEAD keeps olah's Content-Length)."""
        body = self._body() if self.command == "POST" else None
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP | {"host", "authorization", "content-length"}}
        connection = http.client.HTTPConnection(self.state.olah_netloc, timeout=60)
        try:
            connection.request(self.command, target, body=body, headers=headers)
            response = connection.getresponse()
            if patch_info and response.status == 200:
                return self._send_info(response, patch_info)
            window = self._range(response, size)
            if window is not None:
                return self._send_range(response, *window)
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() in _HOP_BY_HOP:
                    continue
                if name.lower() == "location":
                    value = value.replace(self.state.olah_netloc, self.state.public_netloc)
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                while chunk := response.read(1 << 16):
                    self.wfile.write(chunk)
        finally:
            connection.close()

    def _range(self, response: http.client.HTTPResponse, total: int | None) -> tuple[int, int, int] | None:
        """``(first, last, total)`` when the client asked for one byte range and olah sent the whole file."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
        if self.command != "GET" or response.status != 200 or not match or total is None or match[0] == "bytes=-":
            return None
        if match[1]:
            first, last = int(match[1]), min(int(match[2]) if match[2] else total - 1, total - 1)
        else:  # suffix range: the last N bytes
            first, last = max(0, total - int(match[2])), total - 1
        return (first, last, total) if first <= last else None

    def _send_range(self, response: http.client.HTTPResponse, first: int, last: int, total: int) -> None:
        """Answer 206 with bytes ``first..last`` of olah's full answer (olah 0.5.4 ignores Range for mirrors)."""
        self.send_response(206)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP | {"content-length", "content-range"}:
                self.send_header(name, value)
        self.send_header("Content-Range", f"bytes {first}-{last}/{total}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        position = 0
        while position <= last and (chunk := response.read(1 << 16)):
            start, stop = max(first - position, 0), min(last + 1 - position, len(chunk))
            if start < stop:
                self.wfile.write(chunk[start:stop])
            position += len(chunk)

    def _send_info(self, response: http.client.HTTPResponse, repo: str) -> None:
        """Repo info with the visibility this hub tracks (olah always says public, not gated)."""
        info = json.loads(response.read())
        info["private"] = repo in self.state.private
        info["gated"] = "manual" if repo in self.state.gated else False
        self._send_json(200, info)


class LocalHub:
    """olah + the front server, on free loopback ports, over one folder of git repositories.

    ``token`` may write and read everything; ``read_token`` may only read; any other token
    gets 401. ``publish`` puts a local folder in a repo as a new commit.
    """

    def __init__(self, root: str | Path, *, token: str = DEFAULT_TOKEN, read_token: str | None = None,
                 user: str = DEFAULT_USER, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.host = host
        self.store = GitRepoStore(self.root / "mirrors")
        self.state = HubState(self.store, token=token, read_token=read_token, user=user)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._olah: OlahProcess | None = None

    @property
    def endpoint(self) -> str:
        """The URL to use as ``HF_ENDPOINT``."""
        return self.state.endpoint

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request received, in order."""
        return self.state.requests

    def start(self) -> "LocalHub":
        handler = type("BoundHubRequestHandler", (HubRequestHandler,), {"state": self.state})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self.state.public_netloc = f"{self.host}:{self._server.server_address[1]}"
        self._olah = OlahProcess(self.root / "olah", self.store.root, public_netloc=self.state.public_netloc,
                                 host=self.host).start()
        self.state.olah_netloc = self._olah.netloc
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._olah is not None:
            self._olah.stop()
            self._olah = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def publish(self, folder: str | Path, repo_id: str, *, message: str | None = None, private: bool = False,
                gated: bool = False, branch: str = "main", tag: str | None = None) -> str:
        """Commit the files of ``folder`` as the whole content of ``repo_id`` (created if needed); return the sha."""
        sha = self.store.commit_folder(repo_id, folder, message or f"Publish {Path(folder).name}", branch=branch)
        if private:
            self.state.private.add(repo_id)
        if gated:
            self.state.gated.add(repo_id)
        if tag:
            self.store.tag(repo_id, tag, sha)
        return sha

    def commit_files(self, repo_id: str, files: dict[str, bytes], message: str = "Update files",
                     branch: str = "main") -> str:
        """Add or replace some files in a new commit on ``branch``; return the sha."""
        return self.store.commit(repo_id, files, message, branch=branch)
