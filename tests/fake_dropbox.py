"""A fake Dropbox API on 127.0.0.1 for tests and benchmarks, spoken to by the REAL `dropbox` SDK.

It implements the routes the pipeline uses with Dropbox's wire formats: upload arguments in the
`Dropbox-API-Arg` header, JSON answers with `Content-Type: application/json`, `null` for
`append_v2`, route errors as 409 `{"error_summary", "error": {".tag": ...}}`, 429 with
`retry_after`, 401 `expired_access_token` and the token endpoint `/oauth2/token` (refresh tokens and
the PKCE authorization-code grant).

Usage:
    fake = FakeDropbox().start()
    dest = DropboxDestination.from_url("dropbox:/out", environ=fake.environ(), session=fake.session())
    ...
    fake.file("/out/a.xml").data ; fake.fail("files/upload_session/append_v2", "drop") ; fake.stop()

`session()` is a `requests.Session` whose adapter rewrites the SDK's `https://api.dropboxapi.com/...`
and `https://content.dropboxapi.com/...` URLs to this server (keeping path and query, and passing
the original host in `X-Fake-Host` so the fake can check each route went to the right host).

Faults (`fail(route, kind, times=1, **params)`, applied to the next matching requests):
- "429": rate limited, params `retry_after` (seconds, default 0) and `reason`
  (too_many_requests | too_many_write_operations); "500"/"503": server error
- "drop": the request is fully applied, then the connection is closed without an answer (a lost
  response); "drop_before": the connection is closed before anything is applied
- "slow": applied, then the answer waits `delay` seconds (past the client's timeout = lost answer)
- "incorrect_offset": the session's real offset is reported and the chunk is not applied
- "conflict": 409 path/conflict/folder; "expire_token": 401 expired_access_token (the token is
  then dead, so the client must refresh)
- "error": 409 with the given `error` dict (e.g. {".tag": "path", "reason": {".tag": "no_write_permission"}})
- "corrupt": applied, but the stored file has one byte changed (Dropbox storing something else)
- "entry_too_many_writes" (finish_batch_v2): the first `count` entries fail with
  too_many_write_operations and stay uncommitted
`contention = True` makes commits that overlap another commit in the same namespace fail with 429
too_many_write_operations, as Dropbox does; `commit_latency` makes each commit hold the namespace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

BLOCK = 4 * 1024 * 1024
USER_NS = "1000"
TEAM_NS = "2000"
API_HOSTS = {"api.dropboxapi.com"}
CONTENT_HOSTS = {"content.dropboxapi.com"}
CONTENT_ROUTES = {"files/upload", "files/upload_session/start", "files/upload_session/append_v2",
                  "files/upload_session/finish"}
COMMIT_ROUTES = {"files/upload", "files/upload_session/finish", "files/upload_session/finish_batch_v2",
                 "files/upload_session/finish_batch"}
DISALLOWED = {"desktop.ini", "thumbs.db", ".ds_store", ".dropbox", ".dropbox.attr"}


class ContentHasher:
    """Dropbox content hash, streamed (the fake's own implementation, independent of ours)."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.current = hashlib.sha256()
        self.fill = 0
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)
        pos = 0
        while pos < len(data):
            take = min(len(data) - pos, BLOCK - self.fill)
            self.current.update(data[pos:pos + take])
            self.fill += take
            pos += take
            if self.fill == BLOCK:
                self.blocks.append(self.current.digest())
                self.current, self.fill = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        blocks = self.blocks + ([self.current.copy().digest()] if self.fill else [])
        return hashlib.sha256(b"".join(blocks)).hexdigest()


def content_hash(data: bytes) -> str:
    h = ContentHasher()
    h.update(data)
    return h.hexdigest()


@dataclass
class StoredFile:
    path_display: str
    size: int
    content_hash: str
    sha256: str
    data: bytes | None  # None when the fake runs with keep_bytes=False (benchmarks)
    rev: str
    id: str
    server_modified: str

    def metadata(self) -> dict[str, Any]:
        name = self.path_display.rsplit("/", 1)[-1]
        return {".tag": "file", "name": name, "id": self.id, "client_modified": self.server_modified,
                "server_modified": self.server_modified, "rev": self.rev, "size": self.size,
                "path_lower": self.path_display.lower(), "path_display": self.path_display,
                "is_downloadable": True, "content_hash": self.content_hash}


@dataclass
class Session:
    id: str
    ns: str
    hasher: ContentHasher = field(default_factory=ContentHasher)
    chunks: list[bytes] = field(default_factory=list)
    closed: bool = False
    consumed: bool = False


class _Fault(Exception):
    def __init__(self, kind: str, params: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.params = params


class _Answer(Exception):
    """An HTTP answer other than 200 (route errors, auth, rate limits)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def route_error(summary_tags: list[str], error: dict[str, Any]) -> _Answer:
    return _Answer(409, {"error_summary": "/".join(summary_tags) + "/..", "error": error})


class RewriteAdapter(HTTPAdapter):
    """Send the SDK's https://*.dropboxapi.com requests to the fake, keeping path and query."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = urlsplit(base)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = urlsplit(request.url or "")
        request.headers["X-Fake-Host"] = url.hostname or ""
        request.url = urlunsplit((self.base.scheme, self.base.netloc, url.path, url.query, ""))
        return super().send(request, **kwargs)


class FakeDropbox:
    """The fake server and its state; see the module docstring."""

    def __init__(self, *, app_key: str = "fake-app-key", app_secret: str | None = "fake-app-secret",
                 keep_bytes: bool = True, team: bool = False) -> None:
        self.app_key = app_key
        self.app_secret = app_secret
        self.keep_bytes = keep_bytes
        self.team = team
        self.refresh_tokens: set[str] = {"fake-refresh-token"}
        self.access_tokens: set[str] = set()
        self.expired_tokens: set[str] = set()
        self.token_lifetime = 14400
        self.files: dict[tuple[str, str], StoredFile] = {}
        self.folders: set[tuple[str, str]] = set()
        self.sessions: dict[str, Session] = {}
        self.calls: Counter[str] = Counter()
        self.last_arg: dict[str, Any] = {}  # route -> its last decoded argument
        self.body_sizes: dict[str, list[int]] = {}  # route -> sizes of the bodies received
        self.commits = 0  # successful namespace commits (upload, finish, finish_batch_v2)
        self.batch_sizes: list[int] = []
        self.batch_jobs: dict[str, list[Any]] = {}  # finish_batch (v1) async job id -> entries
        self.contention = False
        self.contention_retry_after = 0
        self.commit_latency = 0.0
        self.contention_refusals = 0
        self.pkce_codes: dict[str, str] = {}  # code -> code_challenge
        self._faults: dict[str, list[_Fault]] = {}
        self._in_commit: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeDropbox:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-dropbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def session(self) -> requests.Session:
        """A requests session for `dropbox.Dropbox(..., session=...)` that reaches this fake."""
        s = requests.Session()
        s.mount("https://", RewriteAdapter(self.url))
        return s

    def environ(self, **extra: str) -> dict[str, str]:
        """Settings for a destination that talks to this fake (DROPBOX_* values)."""
        env = {"DROPBOX_APP_KEY": self.app_key, "DROPBOX_REFRESH_TOKEN": next(iter(self.refresh_tokens))}
        if self.app_secret:
            env["DROPBOX_APP_SECRET"] = self.app_secret
        env.update(extra)
        return env

    # -- state inspection and fault injection -----------------------------------------------------

    def file(self, path: str, ns: str = USER_NS) -> StoredFile:
        return self.files[(ns, path.lower())]

    def paths(self, ns: str = USER_NS) -> list[str]:
        with self._lock:
            return sorted(f.path_display for (n, _), f in self.files.items() if n == ns)

    def add_folder(self, path: str, ns: str = USER_NS) -> None:
        with self._lock:
            self.folders.add((ns, path.lower()))

    def remove_folder(self, path: str, ns: str = USER_NS) -> None:
        with self._lock:
            self.folders.discard((ns, path.lower()))

    def fail(self, route: str, kind: str, times: int = 1, **params: Any) -> None:
        with self._lock:
            for _ in range(times):
                self._faults.setdefault(route, []).append(_Fault(kind, params))

    def pending_faults(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._faults.values())

    def expire_tokens(self) -> None:
        """Every access token handed out so far now answers 401 expired_access_token."""
        with self._lock:
            self.expired_tokens |= self.access_tokens
            self.access_tokens.clear()

    def approve(self, code_challenge: str) -> str:
        """The user approved the app in the browser: the code to paste (PKCE flow)."""
        code = "code-" + secrets.token_hex(8)
        with self._lock:
            self.pkce_codes[code] = code_challenge
        return code

    def _take_fault(self, route: str) -> _Fault | None:
        with self._lock:
            queue = self._faults.get(route)
            return queue.pop(0) if queue else None

    # -- request handling ---------------------------------------------------------------------

    def handle(self, route: str, headers: Any, body: bytes, fault: _Fault | None = None
               ) -> tuple[int, Any, dict[str, str]]:
        """Apply one API request; returns (status, JSON body, extra headers)."""
        self._local.fault = fault
        host = headers.get("X-Fake-Host", "")
        if route in CONTENT_ROUTES and host and host not in CONTENT_HOSTS:
            return 400, f"Error in call to API function \"{route}\": wrong host {host}", {}
        if route not in CONTENT_ROUTES and host and host not in API_HOSTS:
            return 400, f"Error in call to API function \"{route}\": wrong host {host}", {}
        self._check_auth(headers)
        ns = USER_NS
        path_root = headers.get("Dropbox-API-Path-Root")
        if path_root:
            root = json.loads(path_root)
            if root.get(".tag") == "root":
                if root["root"] not in (USER_NS, TEAM_NS if self.team else USER_NS):
                    raise _Answer(422, {"error_summary": "invalid_root/..",
                                        "error": {".tag": "invalid_root",
                                                  "invalid_root": {".tag": "user", "home_path": ""}}})
                ns = root["root"]
        if route in CONTENT_ROUTES:
            try:
                arg = json.loads(headers.get("Dropbox-API-Arg", ""))
            except ValueError:
                return 400, f"Error in call to API function \"{route}\": bad Dropbox-API-Arg header", {}
            if headers.get("Content-Type") != "application/octet-stream":
                return 400, f"Error in call to API function \"{route}\": bad Content-Type", {}
        else:
            arg = json.loads(body) if body else None
        with self._lock:
            self.last_arg[route] = arg
            if route in CONTENT_ROUTES:
                self.body_sizes.setdefault(route, []).append(len(body))
        handler = getattr(self, "_r_" + route.replace("/", "_"), None)
        if handler is None:
            return 400, f"Unknown API function: \"{route}\"", {}
        if route in COMMIT_ROUTES:
            return self._commit(route, ns, lambda: handler(ns, arg, body))
        return 200, handler(ns, arg, body), {}

    def _check_auth(self, headers: Any) -> None:
        auth = headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with self._lock:
            if token in self.access_tokens:
                return
            tag = "expired_access_token" if token in self.expired_tokens else "invalid_access_token"
        raise _Answer(401, {"error_summary": tag + "/..", "error": {".tag": tag}})

    def _commit(self, route: str, ns: str, apply: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            busy = self._in_commit[ns] > 0
            if self.contention and busy:
                self.contention_refusals += 1
                raise _Answer(429, {"error_summary": "too_many_write_operations/..",
                                    "error": {"reason": {".tag": "too_many_write_operations"},
                                              "retry_after": self.contention_retry_after}},
                              {"Retry-After": str(self.contention_retry_after)})
            self._in_commit[ns] += 1
        try:
            if self.commit_latency:
                time.sleep(self.commit_latency)
            result = apply()
            with self._lock:
                self.commits += 1
            return 200, result, {}
        finally:
            with self._lock:
                self._in_commit[ns] -= 1

    def token(self, form: dict[str, str]) -> tuple[int, Any]:
        grant = form.get("grant_type")
        if form.get("client_id") != self.app_key:
            return 400, {"error": "invalid_client", "error_description": "Invalid client_id or client_secret"}
        if grant == "refresh_token":
            if self.app_secret and form.get("client_secret") != self.app_secret and form.get(
                    "refresh_token", "").startswith("fake-refresh"):
                return 400, {"error": "invalid_client", "error_description": "Invalid client_id or client_secret"}
            if form.get("refresh_token") not in self.refresh_tokens:
                return 400, {"error": "invalid_grant", "error_description": "refresh token is invalid or revoked"}
            access = "sl." + secrets.token_hex(16)
            with self._lock:
                self.access_tokens.add(access)
            return 200, {"access_token": access, "token_type": "bearer", "expires_in": self.token_lifetime}
        if grant == "authorization_code":
            code, verifier = form.get("code", ""), form.get("code_verifier", "")
            with self._lock:
                challenge = self.pkce_codes.pop(code, None)
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if challenge is None or digest != challenge:
                return 400, {"error": "invalid_grant", "error_description": "code doesn't exist or has expired"}
            access, refresh = "sl." + secrets.token_hex(16), "pkce-refresh-" + secrets.token_hex(8)
            with self._lock:
                self.access_tokens.add(access)
                self.refresh_tokens.add(refresh)
            return 200, {"access_token": access, "token_type": "bearer", "expires_in": self.token_lifetime,
                         "refresh_token": refresh, "scope": "files.content.write files.metadata.read",
                         "uid": "12345", "account_id": "dbid:" + "A" * 35}
        return 400, {"error": "unsupported_grant_type", "error_description": f"grant_type {grant!r}"}

    # -- routes --------------------------------------------------------------------------------

    def _new_session(self, ns: str) -> Session:
        s = Session(id="pid_upload_session:" + uuid.uuid4().hex, ns=ns)
        with self._lock:
            self.sessions[s.id] = s
        return s

    def _session_append(self, s: Session, data: bytes) -> None:
        s.hasher.update(data)
        if self.keep_bytes:
            s.chunks.append(data)

    def _check_hash(self, arg: dict[str, Any], data: bytes) -> None:
        wanted = arg.get("content_hash")
        if wanted is not None and wanted != content_hash(data):
            raise route_error(["content_hash_mismatch"], {".tag": "content_hash_mismatch"})

    def _lookup(self, cursor: dict[str, Any], ns: str, *, for_finish: bool) -> Session:
        s = self.sessions.get(cursor["session_id"])
        wrap = (lambda tags, err: route_error(["lookup_failed", *tags], {".tag": "lookup_failed",
                                                                       "lookup_failed": err})) if for_finish \
            else (lambda tags, err: route_error(tags, err))
        if s is None or s.consumed or s.ns != ns:
            raise wrap(["not_found"], {".tag": "not_found"})
        if cursor["offset"] != s.hasher.size:
            raise wrap(["incorrect_offset"], {".tag": "incorrect_offset", "correct_offset": s.hasher.size})
        return s

    def _r_files_upload_session_start(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        self._check_hash(arg, body)
        s = self._new_session(ns)
        self._session_append(s, body)
        s.closed = bool(arg.get("close"))
        return {"session_id": s.id}

    def _r_files_upload_session_append_v2(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        with self._lock:
            s = self._lookup(arg["cursor"], ns, for_finish=False)
            if s.closed:
                raise route_error(["closed"], {".tag": "closed"})
            self._check_hash(arg, body)
            self._session_append(s, body)
            s.closed = bool(arg.get("close"))
        return None

    def _r_files_upload_session_finish(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        with self._lock:
            s = self._lookup(arg["cursor"], ns, for_finish=True)
            self._check_hash(arg, body)
            self._check_path(arg["commit"]["path"], ns, lambda tags, err: route_error(
                ["path", *tags], {".tag": "path", "path": err}))
            self._session_append(s, body)
            s.consumed = True
            return self._store(ns, arg["commit"]["path"], s).metadata()

    def _r_files_upload(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        self._check_hash(arg, body)
        with self._lock:
            self._check_path(arg["path"], ns, lambda tags, err: route_error(
                ["path", *tags], {".tag": "path", "reason": err, "upload_session_id": "pid_upload_session:x"}))
            s = Session(id="direct", ns=ns)
            self._session_append(s, body)
            return self._store(ns, arg["path"], s).metadata()

    def _r_files_upload_session_finish_batch_v2(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        entries = arg["entries"]
        if len(entries) > 1000:
            raise _Answer(400, "Error in call to API function \"files/upload_session/finish_batch_v2\": "
                               "entries: list has more than 1000 items")
        out = []
        with self._lock:
            self.batch_sizes.append(len(entries))
            fault = getattr(self._local, "fault", None)
            refuse = int(fault.params.get("count", 1)) if fault and fault.kind == "entry_too_many_writes" else 0
            for entry in entries:
                if refuse:
                    refuse -= 1
                    out.append({".tag": "failure", "failure": {".tag": "too_many_write_operations"}})
                    continue
                try:
                    s = self._lookup(entry["cursor"], ns, for_finish=True)
                    if not s.closed:
                        raise route_error(["lookup_failed", "not_closed"],
                                          {".tag": "lookup_failed", "lookup_failed": {".tag": "not_closed"}})
                    self._check_path(entry["commit"]["path"], ns, lambda tags, err: route_error(
                        ["path", *tags], {".tag": "path", "path": err}))
                    s.consumed = True
                    meta = self._store(ns, entry["commit"]["path"], s).metadata()
                    del meta[".tag"]  # a FileMetadata struct here, not the Metadata union
                    out.append({".tag": "success", **meta})
                except _Answer as answer:
                    out.append({".tag": "failure", "failure": answer.body["error"]})
        return {"entries": out}

    def _r_files_upload_session_finish_batch(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        """v1: the same commits, answered later through finish_batch/check."""
        result = self._r_files_upload_session_finish_batch_v2(ns, arg, body)
        job_id = "dbjid:" + secrets.token_hex(8)
        with self._lock:
            self.batch_jobs[job_id] = result["entries"]
        return {".tag": "async_job_id", "async_job_id": job_id}

    def _r_files_upload_session_finish_batch_check(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        with self._lock:
            entries = self.batch_jobs.get(arg["async_job_id"])
        if entries is None:
            raise route_error(["invalid_async_job_id"], {".tag": "invalid_async_job_id"})
        return {".tag": "complete", "entries": entries}

    def _r_files_get_metadata(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        key = (ns, arg["path"].lower())
        with self._lock:
            if key in self.files:
                return self.files[key].metadata()
            if key in self.folders:
                name = arg["path"].rsplit("/", 1)[-1]
                return {".tag": "folder", "name": name, "id": "id:folder", "path_lower": key[1],
                        "path_display": arg["path"]}
        raise route_error(["path", "not_found"], {".tag": "path", "path": {".tag": "not_found"}})

    def _r_files_delete_v2(self, ns: str, arg: dict[str, Any], body: bytes) -> Any:
        key = (ns, arg["path"].lower())
        with self._lock:
            stored = self.files.pop(key, None)
        if stored is None:
            raise route_error(["path_lookup", "not_found"],
                              {".tag": "path_lookup", "path_lookup": {".tag": "not_found"}})
        return {"metadata": stored.metadata()}

    def _r_users_get_current_account(self, ns: str, arg: Any, body: bytes) -> Any:
        if self.team:
            root_info = {".tag": "team", "root_namespace_id": TEAM_NS, "home_namespace_id": USER_NS,
                         "home_path": "/Fake User"}
        else:
            root_info = {".tag": "user", "root_namespace_id": USER_NS, "home_namespace_id": USER_NS}
        return {"account_id": "dbid:" + "A" * 35,
                "name": {"given_name": "Fake", "surname": "User", "familiar_name": "Fake",
                         "display_name": "Fake User", "abbreviated_name": "FU"},
                "email": "fake@example.edu", "email_verified": True, "disabled": False, "country": "US",
                "locale": "en", "referral_link": "https://www.dropbox.com/referrals/x", "is_paired": False,
                "account_type": {".tag": "business" if self.team else "basic"}, "root_info": root_info}

    def _check_path(self, path: str, ns: str, error: Any) -> None:
        parts = path.split("/")
        if not path.startswith("/") or path.endswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
            raise error(["malformed_path"], {".tag": "malformed_path"})
        if parts[-1].lower() in DISALLOWED or any(c in path for c in "\\<>:\"|?*"):
            raise error(["disallowed_name"], {".tag": "disallowed_name"})
        if (ns, path.lower()) in self.folders:
            raise error(["conflict", "folder"], {".tag": "conflict", "conflict": {".tag": "folder"}})
        for i in range(2, len(parts)):
            if (ns, "/".join(parts[:i]).lower()) in self.files:
                raise error(["conflict", "file_ancestor"], {".tag": "conflict", "conflict": {".tag": "file_ancestor"}})

    def _store(self, ns: str, path: str, s: Session) -> StoredFile:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        key = (ns, path.lower())
        previous = self.files.get(key)
        data = b"".join(s.chunks) if self.keep_bytes else None
        fault = getattr(self._local, "fault", None)
        if fault is not None and fault.kind == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
            h = ContentHasher()
            h.update(data)
            s.hasher = h
        stored = StoredFile(
            path_display=previous.path_display if previous else path, size=s.hasher.size,
            content_hash=s.hasher.hexdigest(), sha256=s.hasher.sha256.hexdigest(),
            data=data, rev=secrets.token_hex(8) + "0",
            id=previous.id if previous else "id:" + secrets.token_urlsafe(16), server_modified=now)
        self.files[key] = stored
        s.chunks = []
        return stored


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeDropbox

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        """`/_fake/stats`: counters for a fake running in another process (benchmarks)."""
        fake = self.server_fake
        if urlsplit(self.path).path != "/_fake/stats":
            return self._send(404, "not found", content_type="text/plain")
        with fake._lock:
            stats = {"calls": dict(fake.calls), "commits": fake.commits, "batch_sizes": fake.batch_sizes,
                     "contention_refusals": fake.contention_refusals, "files": len(fake.files)}
        self._send(200, stats)

    def do_POST(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if path == "/oauth2/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            fake.calls["oauth2/token"] += 1
            status, answer = fake.token(form)
            return self._send(status, answer)
        if not path.startswith("/2/"):
            return self._send(404, "not found", content_type="text/plain")
        route = path[len("/2/"):]
        fake.calls[route] += 1
        fault = fake._take_fault(route)
        try:
            if fault is not None:
                kind = fault.kind
                if kind == "drop_before":
                    return self._drop()
                if kind in ("429", "500", "503", "conflict", "expire_token", "incorrect_offset", "error"):
                    return self._fault_answer(fault, route, body)
            status, answer, headers = fake.handle(route, self.headers, body, fault)
        except _Answer as answer:
            return self._send(answer.status, answer.body, headers=answer.headers)
        if fault is not None and fault.kind == "drop":
            return self._drop()
        if fault is not None and fault.kind == "slow":
            time.sleep(float(fault.params.get("delay", 2.0)))
        self._send(status, answer, headers=headers)

    def _fault_answer(self, fault: _Fault, route: str, body: bytes) -> None:
        fake, kind = self.server_fake, fault.kind
        if kind == "429":
            retry_after = int(fault.params.get("retry_after", 0))
            reason = fault.params.get("reason", "too_many_requests")
            return self._send(429, {"error_summary": reason + "/..",
                                    "error": {"reason": {".tag": reason}, "retry_after": retry_after}},
                              headers={"Retry-After": str(retry_after)})
        if kind in ("500", "503"):
            return self._send(int(kind), "Internal Server Error", content_type="text/plain")
        if kind == "conflict":
            err = {".tag": "conflict", "conflict": {".tag": "folder"}}
            if route == "files/upload":
                error = {".tag": "path", "reason": err, "upload_session_id": "pid_upload_session:x"}
            else:
                error = {".tag": "path", "path": err}
            return self._send(409, {"error_summary": "path/conflict/folder/..", "error": error})
        if kind == "error":
            error = fault.params["error"]
            return self._send(409, {"error_summary": error[".tag"] + "/..", "error": error})
        if kind == "expire_token":
            fake.expire_tokens()
            return self._send(401, {"error_summary": "expired_access_token/..",
                                    "error": {".tag": "expired_access_token"}})
        # incorrect_offset: report the real offset without applying the chunk
        arg = json.loads(self.headers.get("Dropbox-API-Arg", "{}"))
        s = fake.sessions.get(arg.get("cursor", {}).get("session_id", ""))
        correct = s.hasher.size if s else 0
        error = {".tag": "incorrect_offset", "correct_offset": correct}
        if route.endswith("finish"):
            error = {".tag": "lookup_failed", "lookup_failed": error}
        return self._send(409, {"error_summary": "incorrect_offset/..", "error": error})

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, status: int, answer: Any, *, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        if isinstance(answer, str) and content_type == "application/json" and status == 400:
            content_type = "text/plain; charset=utf-8"
        payload = answer.encode() if isinstance(answer, str) and not content_type.startswith("application/json") \
            else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Dropbox-Request-Id", uuid.uuid4().hex)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True


def main() -> None:
    """Run the fake in its own process (benchmarks): prints its URL, serves until killed."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--keep-bytes", action="store_true")
    parser.add_argument("--contention", action="store_true")
    parser.add_argument("--commit-latency", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeDropbox(keep_bytes=args.keep_bytes)
    fake.contention = args.contention
    fake.commit_latency = args.commit_latency
    fake.start()
    print(fake.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
