"""A fake Hugging Face Hub: a real HTTP server on 127.0.0.1 that answers the requests ``huggingface_hub``
makes to create a repository and commit a folder to it, and keeps the repositories in memory.

Nothing is patched: point the real client at it with ``HF_ENDPOINT`` (read when huggingface_hub is
imported, so in a fresh process: ``FakeHub.env()``) and a token (``HF_TOKEN``). What it implements is what
``HfApi.create_repo`` and ``HfApi.upload_folder`` (huggingface_hub 1.x-2.x; both the hf_xet pipeline and
the single-commit path) call, as the Hub answers it:

- ``POST /api/repos/create``: a new repository (with the ``.gitattributes`` the Hub writes), 409 when it
  exists; ``visibility`` private or public;
- ``POST /api/validate-yaml``: the README's front matter must be a YAML mapping (400 with the errors
  otherwise; tags a list of strings, base_model an OWNER/NAME id);
- ``GET /api/{models,datasets}/OWNER/NAME/tree/REV[/PATH]`` (``recursive``): the files, for
  ``delete_patterns``;
- ``POST /api/{models,datasets}/OWNER/NAME/preupload/REV``: every file ``regular`` (so its bytes come
  base64 in the commit) with the git oid of the file already there, so unchanged files are not sent again;
- ``POST /api/{models,datasets}/OWNER/NAME/commit/REV``: the NDJSON commit (header, ``file``,
  ``deletedFile``, ``deletedFolder``), applied at once; an ``lfsFile`` is refused (nothing was offered LFS);
- ``GET /api/{models,datasets}/OWNER/NAME[/revision/REV]``: repository info (what upload_folder asks when
  nothing changed).

Every request needs ``Authorization: Bearer TOKEN`` (401 otherwise). Every request is logged
(``requests``); one to any other path is answered 404 and listed in ``unhandled``. ``fail`` makes an
endpoint answer an error or drop the connection, to test what a user sees when the Hub fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN = "hf_fake_write_token"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# what the Hub commits as .gitattributes in a new repository (abridged)
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
)
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
ROUTE = re.compile(
    r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<op>preupload|commit|tree|revision)/(?P<rev>[^/]+)(?P<rest>/.*)?)?"
)


def git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)  # {oid, summary, added, deleted}
    sha: str = "0" * 40


class FakeHub:
    """``with FakeHub() as hub:`` a server on a free port of 127.0.0.1; ``hub.url`` is its endpoint."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unhandled: list[tuple[str, str]] = []
        # (method, endpoint) -> (status, message) or "drop" (close the connection, no answer); the
        # endpoint is "create", "validate-yaml", "preupload", "commit", "tree" or "info"
        self.fail: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_DELETE(self) -> None:
                hub._handle(self, "DELETE")

            def do_PUT(self) -> None:
                hub._handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def env(self, base: dict[str, str], home: str) -> dict[str, str]:
        """``base`` (an environment) pointed at this server with its token: online, no user config
        (``HF_HOME`` = ``home``: no stored token or cache of the user's), no telemetry."""
        env = {k: v for k, v in base.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(
            HF_ENDPOINT=self.url,
            HF_TOKEN=self.token,
            HF_HOME=home,
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY="127.0.0.1,localhost",
        )
        return env

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # -- the handler -----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, path))
        try:
            endpoint, handler, args = self._route(method, path)
        except LookupError:
            with self.lock:
                self.unhandled.append((method, path))
            return self._send(h, 404, {"error": f"fake hub: no endpoint {method} {path}"})
        failure = self.fail.get((method, endpoint))
        if failure == "drop":
            h.close_connection = True
            h.connection.shutdown(2)  # the socket closes without an answer
            return None
        if failure is not None:
            status, message = failure
            return self._send(h, status, {"error": message})
        auth = h.headers.get("Authorization", "")
        if auth != f"Bearer {self.token}":
            return self._send(
                h, 401, {"error": "Invalid credentials in Authorization header"}, code="InvalidCredentials"
            )
        try:
            with self.lock:
                status, payload, code = handler(*args, body=body, query=query, base=self.url)
        except _Error as err:
            status, payload, code = err.status, {"error": err.message}, err.code
        return self._send(h, status, payload, code=code)

    def _route(self, method: str, path: str):
        if (method, path) == ("POST", "/api/repos/create"):
            return "create", self._create, ()
        if (method, path) == ("POST", "/api/validate-yaml"):
            return "validate-yaml", self._validate_yaml, ()
        m = ROUTE.fullmatch(path)
        if m:
            repo_type = m["type"][:-1]
            op, rev, rest = m["op"], m["rev"], (m["rest"] or "").lstrip("/")
            if method == "POST" and op == "preupload" and not rest:
                return "preupload", self._preupload, (repo_type, m["repo"], rev)
            if method == "POST" and op == "commit" and not rest:
                return "commit", self._commit, (repo_type, m["repo"], rev)
            if method == "GET" and op == "tree":
                return "tree", self._tree, (repo_type, m["repo"], rev, rest)
            if method == "GET" and (op is None or (op == "revision" and not rest)):
                return "info", self._info, (repo_type, m["repo"], rev or "main")
        raise LookupError(path)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: Any, code: str | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        if code:
            h.send_header("X-Error-Code", code)
        if status >= 400 and isinstance(payload, dict) and "error" in payload:
            h.send_header("X-Error-Message", payload["error"])
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    # -- endpoints (called under the lock) -------------------------------------------------------------

    def _existing(self, repo_type: str, repo_id: str, rev: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _Error(404, "Repository not found", "RepoNotFound")
        if rev != "main":
            raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo

    def _create(self, body: bytes, query: dict, base: str):
        data = json.loads(body)
        repo_type = data.get("type") or "model"
        if repo_type not in PREFIX:
            raise _Error(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
        if not REPO_ID.fullmatch(repo_id):
            raise _Error(400, f"Invalid repo name {repo_id!r}")
        url = f"{base}/{PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # the Hub's answer, with the url (create_repo(exist_ok=True) reads it)
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}, "RepoExists"
        repo = Repo(repo_type, repo_id, private=data.get("visibility") == "private")
        repo.files[".gitattributes"] = GITATTRIBUTES
        repo.sha = hashlib.sha1(f"initial {repo_type} {repo_id}".encode()).hexdigest()
        self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": repo.sha[:24]}, None

    def _validate_yaml(self, body: bytes, query: dict, base: str):
        import yaml

        content = json.loads(body)["content"]
        errors = []
        if content.startswith("---\n") and "\n---\n" in content[3:]:
            try:
                meta = yaml.safe_load(content[4 : content.index("\n---\n", 3)])
            except yaml.YAMLError as exc:
                meta, errors = None, [{"message": f"Invalid YAML: {exc}"}]
            if not errors and not isinstance(meta, dict):
                errors.append({"message": "Metadata must be a YAML mapping"})
            if isinstance(meta, dict):
                tags = meta.get("tags", [])
                if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                    errors.append({"message": '"tags" must be an array of strings'})
                base_model = meta.get("base_model")
                models = base_model if isinstance(base_model, list) else [base_model]
                if base_model is not None and not all(
                    isinstance(b, str) and REPO_ID.fullmatch(b) for b in models
                ):
                    errors.append({"message": '"base_model" must be a model id (OWNER/NAME)'})
        if errors:
            return 400, {"errors": errors, "warnings": []}, "BadRequest"
        return 200, {"errors": [], "warnings": []}, None

    def _preupload(self, repo_type: str, repo_id: str, rev: str, body: bytes, query: dict, base: str):
        repo = self._existing(repo_type, repo_id, rev)
        files = []
        for f in json.loads(body)["files"]:
            old = repo.files.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_oid(old) if old is not None else None,
                }
            )
        return 200, {"files": files, "commitOid": repo.sha}, None

    def _commit(self, repo_type: str, repo_id: str, rev: str, body: bytes, query: dict, base: str):
        repo = self._existing(repo_type, repo_id, rev)
        if query.get("create_pr"):
            raise _Error(400, "fake hub: pull requests are not implemented")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise _Error(400, "The commit must start with a header with a summary")
        files = dict(repo.files)
        added, deleted = [], []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            path = value["path"]
            if path.startswith("/") or ".." in path.split("/"):
                raise _Error(400, f"Invalid path {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _Error(400, f"{path}: unsupported encoding {value.get('encoding')!r}")
                files[path] = base64.b64decode(value["content"], validate=True)
                added.append(path)
            elif key == "deletedFile":
                if path not in files:
                    raise _Error(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
                deleted.append(path)
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                for p in gone:
                    del files[p]
                deleted += gone
            elif key == "lfsFile":
                raise _Error(400, f"{path}: LFS file, but preupload said regular (not stored by the fake)")
            else:
                raise _Error(400, f"Unknown commit operation {key!r}")
        parent = lines[0]["value"].get("parentCommit")
        if parent is not None and parent != repo.sha:
            raise _Error(412, "A commit has happened since. Please refresh and try again.")
        repo.files = files
        repo.sha = hashlib.sha1((repo.sha + json.dumps(lines[0]) + str(sorted(added))).encode()).hexdigest()
        repo.commits.append(
            {"oid": repo.sha, "summary": lines[0]["value"]["summary"], "added": added, "deleted": deleted}
        )
        url = f"{base}/{PREFIX[repo_type]}{repo_id}/commit/{repo.sha}"
        return 200, {"success": True, "commitOid": repo.sha, "commitUrl": url, "pullRequestUrl": None}, None

    def _tree(self, repo_type: str, repo_id: str, rev: str, rest: str, body: bytes, query: dict, base: str):
        repo = self._existing(repo_type, repo_id, rev)
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        prefix = rest.strip("/") + "/" if rest.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in repo.files):
            raise _Error(404, f"{rest} does not exist on main", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40})
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        return 200, list(entries.values()), None

    def _info(self, repo_type: str, repo_id: str, rev: str, body: bytes, query: dict, base: str):
        repo = self._existing(repo_type, repo_id, rev)
        return (
            200,
            {
                "id": repo_id,
                "sha": repo.sha,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            },
            None,
        )


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
