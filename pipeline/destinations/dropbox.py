"""Dropbox destination: streamed, verified, resumable uploads that land re-runs on the same paths.

How one output travels (see docs/dropbox.md):
- bytes are buffered up to one chunk (DROPBOX_CHUNK_MIB, a multiple of 4 MiB); an output that ends
  before the first chunk is full goes up in one `files_upload`, a larger one through an upload
  session (`start` with the first chunk, `append_v2`, `finish` with the rest). A full chunk is sent
  by an uploader thread while the caller fills the buffer again; at most the buffer and one chunk
  in flight are in memory.
- every request carries the content hash of its bytes (Dropbox refuses corrupted bodies); after the
  commit, Dropbox's `content_hash` and size must equal ours or the file fails.
- `WriteMode.overwrite` + `mute=True`: a re-run replaces the file instead of adding "file (1).xml".
- retries are ours, bounded by attempts and by the caller's deadline: transport errors, 5xx, 429
  (honouring its back-off) and `too_many_write_operations`. The SDK's own retries are switched off
  (`max_retries_on_error=0`, `max_retries_on_rate_limit=0`) so its endless 429 loop cannot outlive a
  function invocation. An append whose answer was lost is resent; Dropbox then answers
  `incorrect_offset` with the offset it has, and we continue from there, so bytes are never
  duplicated or skipped. A `finish` whose answer was lost is confirmed with `get_metadata`.
- not retried: bad or revoked credentials (one message saying to run dropbox-auth), malformed or
  disallowed paths, conflicts with a folder, no write permission, insufficient space.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import dropbox
import requests
from dropbox import files as dbx_files
from dropbox.common import PathRoot
from dropbox.exceptions import (
    ApiError,
    AuthError,
    BadInputError,
    HttpError,
    InternalServerError,
    PathRootError,
    RateLimitError,
)

from pipeline import __version__, settings
from pipeline.destinations.base import DROPBOX_BLOCK, DestinationError, OutputResult, StreamHasher
from pipeline.destinations.paths import dropbox_root, sanitize_path

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_TIMEOUT = 100.0  # seconds without a byte from Dropbox before a request counts as lost
DEFAULT_ATTEMPTS = 8
_TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DropboxAuthError(DestinationError):
    """The refresh token, app key or secret is wrong or revoked: never retried."""


@dataclass
class BatchItem:
    """One closed upload session waiting for `finish_batch_v2` (per-record mode)."""

    relpath: str
    path: str
    session_id: str
    size: int
    sha256: str
    content_hash: str


def build_client(
    environ: Mapping[str, str] | None = None,
    *,
    session: requests.Session | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dropbox.Dropbox:
    """A Dropbox client from the DROPBOX_* settings, with the SDK's own retries switched off."""
    refresh_token = settings.require("DROPBOX_REFRESH_TOKEN", environ)
    app_key = settings.require("DROPBOX_APP_KEY", environ)
    app_secret = settings.get("DROPBOX_APP_SECRET", environ)
    return dropbox.Dropbox(
        oauth2_refresh_token=refresh_token,
        app_key=app_key,
        app_secret=app_secret,
        session=session,
        timeout=timeout,
        max_retries_on_error=0,
        max_retries_on_rate_limit=0,
        user_agent=f"alma-export-pipeline/{__version__}",
    )


def _describe_api_error(err: Any) -> str:
    """Dropbox's typed error as its summary path, e.g. `path/conflict/folder`."""
    parts: list[str] = []
    while err is not None and hasattr(err, "_tag"):
        parts.append(str(err._tag))
        value = getattr(err, "_value", None)
        if value is not None and hasattr(value, "_tag"):
            err = value
        elif value is not None and hasattr(value, "reason"):  # UploadWriteFailed
            err = value.reason
        else:
            break
    return "/".join(parts) or repr(err)


def _is_too_many_write_operations(err: Any) -> bool:
    return "too_many_write_operations" in _describe_api_error(err).split("/")


_HINTS = {
    "malformed_path": "the path is not valid in Dropbox",
    "disallowed_name": "Dropbox does not allow this file name",
    "conflict": "something else (a folder?) is in the way at this path",
    "no_write_permission": "the app has no permission to write here (scope files.content.write, team folder?)",
    "insufficient_space": "the Dropbox account or team is out of space",
    "team_folder": "the path is a team folder that cannot be written to",
    "not_found": "the upload session expired (7 days) or is unknown; start this file again",
    "content_hash_mismatch": "the bytes were damaged on the way",
    "payload_too_large": "a request carried more than 150 MiB",
}


class DropboxDestination:
    """Outputs under one Dropbox folder (`dropbox:/folder`); one client shared by all outputs."""

    def __init__(
        self,
        root: str,
        client_factory: Callable[[], dropbox.Dropbox],
        *,
        chunk_size: int = 8 * MiB,
        team_space: bool = False,
        deadline: float | None = None,
        max_attempts: int = DEFAULT_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_size <= 0 or chunk_size % DROPBOX_BLOCK or chunk_size > 148 * MiB:
            raise ValueError(f"chunk size {chunk_size} must be a multiple of 4 MiB, at most 148 MiB")
        self.root = dropbox_root(root)
        self.url = "dropbox:" + (self.root or "/")
        self.chunk_size = chunk_size
        self.team_space = team_space
        self.deadline = deadline  # time.monotonic() value after which no retry is started
        self.max_attempts = max_attempts
        self.calls: dict[str, int] = {}  # API calls made, by route (for reports and benchmarks)
        self._client_factory = client_factory
        self._client: dropbox.Dropbox | None = None
        self._uploader: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._sleep = sleep

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        environ: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        max_attempts: int = DEFAULT_ATTEMPTS,
    ) -> DropboxDestination:
        """`dropbox:/folder` with credentials and chunk size from settings; `session` lets tests (and
        proxies) route the SDK's requests."""
        if not url.startswith("dropbox:"):
            raise ValueError(f"not a Dropbox URL: {url!r} (expected dropbox:/folder)")
        chunk_mib = settings.get("DROPBOX_CHUNK_MIB", environ)
        if chunk_mib % 4:
            raise settings.SettingError("DROPBOX_CHUNK_MIB", f"must be a multiple of 4, got {chunk_mib}")
        # Read the credentials now so a missing one fails before any work is done.
        settings.require("DROPBOX_REFRESH_TOKEN", environ)
        settings.require("DROPBOX_APP_KEY", environ)
        env = dict(environ) if environ is not None else None
        return cls(
            url[len("dropbox:"):],
            lambda: build_client(env, session=session, timeout=timeout),
            chunk_size=chunk_mib * MiB,
            team_space=settings.get("DROPBOX_TEAM_SPACE", environ),
            deadline=deadline,
            max_attempts=max_attempts,
        )

    # -- paths -------------------------------------------------------------------------------

    def dropbox_path(self, relpath: str) -> str:
        """The full Dropbox path for `relpath`; every segment made acceptable to Dropbox."""
        try:
            rel = sanitize_path(relpath)
        except ValueError as exc:
            raise DestinationError(f"output path refused: {exc}") from None
        if not rel:
            raise DestinationError(f"output path {relpath!r} is empty")
        return f"{self.root}/{rel}"

    def location(self, relpath: str) -> str:
        return "dropbox:" + self.dropbox_path(relpath)

    # -- outputs -----------------------------------------------------------------------------

    def open(self, relpath: str, *, deadline: float | None = None) -> DropboxOutput:
        return DropboxOutput(self, relpath, self.dropbox_path(relpath), deadline)

    def write_bytes(self, relpath: str, data: bytes, *, deadline: float | None = None) -> OutputResult:
        out = self.open(relpath, deadline=deadline)
        try:
            out.write(data)
            return out.commit()
        except BaseException:
            out.abort()
            raise

    def delete(self, relpath: str, *, deadline: float | None = None) -> bool:
        """Remove a file (a stale `_FAILED.json`); False when it was not there."""
        path = self.dropbox_path(relpath)
        try:
            self.call("files/delete_v2", self.client().files_delete_v2, path, deadline=deadline)
        except ApiError as exc:
            err = exc.error
            if err is not None and err.is_path_lookup() and err.get_path_lookup().is_not_found():
                return False
            raise self.api_failure("files/delete_v2", path, exc) from None
        return True

    def resume(self, state: dict[str, Any], *, deadline: float | None = None) -> DropboxOutput:
        """Continue an output from `DropboxOutput.checkpoint()` (possibly in another process)."""
        if state.get("kind") != "dropbox":
            raise DestinationError(f"cannot resume a {state.get('kind')!r} output in {self.url}")
        relpath = str(state["relpath"])
        out = DropboxOutput(self, relpath, self.dropbox_path(relpath), deadline, state=state)
        return out

    # -- the client and the retry loop -------------------------------------------------------

    def client(self) -> dropbox.Dropbox:
        with self._lock:
            if self._client is None:
                client = self._client_factory()
                if self.team_space:
                    account = self.call("users/get_current_account", client.users_get_current_account)
                    ns = account.root_info.root_namespace_id
                    client = client.with_path_root(PathRoot.root(ns))
                    log.info("Dropbox paths are rooted in the team space (namespace %s)", ns)
                self._client = client
            return self._client

    def uploader(self) -> ThreadPoolExecutor:
        """Threads that send streamed chunks (one chunk in flight per output)."""
        with self._lock:
            if self._uploader is None:
                self._uploader = ThreadPoolExecutor(4, thread_name_prefix="dropbox-upload")
            return self._uploader

    def call(self, route: str, fn: Callable[..., T], *args: Any, deadline: float | None = None,
             **kwargs: Any) -> T:
        """Run one SDK call with our bounded retries; `ApiError`s other than
        too_many_write_operations are raised unchanged for the caller to interpret."""
        deadline = self.deadline if deadline is None else deadline
        attempt = 0
        while True:
            attempt += 1
            with self._count_lock:
                self.calls[route] = self.calls.get(route, 0) + 1
            try:
                return fn(*args, **kwargs)
            except AuthError as exc:
                raise DropboxAuthError(
                    f"Dropbox refused the credentials ({_describe_api_error(exc.error)}): the refresh token "
                    "is wrong, revoked or belongs to another app; run `python -m pipeline dropbox-auth` and "
                    "set DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY (and DROPBOX_APP_SECRET unless PKCE)"
                ) from None
            except PathRootError as exc:
                raise DestinationError(f"Dropbox {route}: team space root refused ({exc.error})") from None
            except BadInputError as exc:
                if "invalid_client" in str(exc.message) or "invalid_grant" in str(exc.message):
                    raise DropboxAuthError(
                        "Dropbox refused the app key or secret (invalid_client): check DROPBOX_APP_KEY and "
                        "DROPBOX_APP_SECRET (leave the secret unset for a PKCE refresh token)") from None
                raise DestinationError(f"Dropbox {route}: request refused as bad input: {exc.message}") from None
            except RateLimitError as exc:
                reason = _describe_api_error(exc.error.reason) if exc.error is not None else "too_many_requests"
                delay = float(exc.backoff) if exc.backoff is not None else 5.0
                delay += random.uniform(0, 0.25)
                problem = f"rate limited ({reason}, retry after {exc.backoff}s)"
            except InternalServerError as exc:
                delay = min(30.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
                problem = f"server error {exc.status_code}"
            except _TRANSPORT_ERRORS as exc:
                delay = min(30.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)
                problem = f"transport error ({type(exc).__name__}: {exc})"
            except ApiError as exc:
                if not _is_too_many_write_operations(exc.error):
                    raise
                delay = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
                problem = "too_many_write_operations"
            except HttpError as exc:
                raise DestinationError(f"Dropbox {route}: HTTP {exc.status_code}: {exc.body}"[:500]) from None
            if attempt >= self.max_attempts:
                raise DestinationError(f"Dropbox {route}: gave up after {attempt} attempts, last: {problem}",
                                       retryable=True)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise DestinationError(f"Dropbox {route}: out of time after {attempt} attempts, last: {problem}",
                                       retryable=True)
            log.info("Dropbox %s: %s; retry %d in %.2fs", route, problem, attempt, delay)
            self._sleep(delay)

    def api_failure(self, route: str, path: str, exc: ApiError) -> DestinationError:
        """One clear, non-retryable error for a route error Dropbox returned."""
        summary = _describe_api_error(exc.error)
        hint = next((h for tag, h in _HINTS.items() if tag in summary.split("/")), "")
        return DestinationError(f"Dropbox {route} {path}: {summary}" + (f" ({hint})" if hint else ""))

    def verify(self, path: str, meta: Any, size: int, content_hash: str) -> None:
        """The committed file must be exactly what we streamed."""
        if meta.size != size or meta.content_hash != content_hash:
            raise DestinationError(
                f"Dropbox {path}: verification failed: Dropbox holds {meta.size} bytes with content hash "
                f"{meta.content_hash}, we sent {size} bytes with content hash {content_hash}")

    def confirm_committed(self, path: str, size: int, content_hash: str, deadline: float | None) -> Any:
        """After a lost answer to a commit: is the file there with our bytes? Returns its metadata."""
        client = self.client()
        try:
            meta = self.call("files/get_metadata", client.files_get_metadata, path, deadline=deadline)
        except ApiError as exc:
            raise self.api_failure("files/get_metadata", path, exc) from None
        if not isinstance(meta, dbx_files.FileMetadata):
            raise DestinationError(f"Dropbox {path}: expected a file after the commit, found {type(meta).__name__}")
        self.verify(path, meta, size, content_hash)
        return meta

    # -- per-record mode: closed sessions committed in batches ---------------------------------

    def upload_closed(self, data: bytes, *, deadline: float | None = None) -> str:
        """Upload one small file's bytes as a closed session (to be committed by `commit_batch`)."""
        client = self.client()
        content_hash = StreamHasher.of(data).content_hash
        try:
            result = self.call("files/upload_session/start", client.files_upload_session_start, data,
                               close=True, content_hash=content_hash, deadline=deadline)
        except ApiError as exc:
            raise self.api_failure("files/upload_session/start", "(per-record)", exc) from None
        return result.session_id

    def commit_batch(self, items: list[BatchItem], *, deadline: float | None = None
                     ) -> list[OutputResult | DestinationError]:
        """Commit up to 1,000 closed sessions in one `finish_batch_v2`; entries refused with
        too_many_write_operations go again; a result per item, in order."""
        if len(items) > 1000:
            raise ValueError("finish_batch_v2 takes at most 1,000 entries")
        client = self.client()
        results: list[OutputResult | DestinationError | None] = [None] * len(items)
        pending = list(range(len(items)))
        rounds = 0
        while pending:
            rounds += 1
            entries = [
                dbx_files.UploadSessionFinishArg(
                    cursor=dbx_files.UploadSessionCursor(items[i].session_id, items[i].size),
                    commit=dbx_files.CommitInfo(items[i].path, mode=dbx_files.WriteMode.overwrite, mute=True),
                )
                for i in pending
            ]
            try:
                batch = self.call("files/upload_session/finish_batch_v2", client.files_upload_session_finish_batch_v2,
                                  entries, deadline=deadline)
            except ApiError as exc:
                raise self.api_failure("files/upload_session/finish_batch_v2", items[pending[0]].path, exc) from None
            again: list[int] = []
            for i, entry in zip(pending, batch.entries, strict=True):
                item = items[i]
                if entry.is_success():
                    meta = entry.get_success()
                    try:
                        self.verify(item.path, meta, item.size, item.content_hash)
                        results[i] = OutputResult(meta.path_display, item.size, item.sha256, item.content_hash,
                                                  {"relpath": item.relpath})
                    except DestinationError as exc:
                        results[i] = exc
                    continue
                failure = entry.get_failure()
                summary = _describe_api_error(failure)
                if _is_too_many_write_operations(failure) and rounds < self.max_attempts:
                    again.append(i)
                    continue
                    continue
                hint = next((h for tag, h in _HINTS.items() if tag in summary.split("/")), "")
                results[i] = DestinationError(
                    f"Dropbox finish_batch_v2 {item.path}: {summary}" + (f" ({hint})" if hint else ""))
                if summary.startswith("lookup_failed/not_found"):
                    # An answer to an earlier try was lost: the session may already be committed.
                    try:
                        meta = self.confirm_committed(item.path, item.size, item.content_hash, deadline)
                        results[i] = OutputResult(meta.path_display, item.size, item.sha256, item.content_hash,
                                                  {"relpath": item.relpath})
                    except DestinationError:
                        pass
            if again:
                delay = min(30.0, 0.5 * 2**rounds) * random.uniform(0.5, 1.0)
                if deadline is not None and time.monotonic() + delay > deadline:
                    for i in again:
                        results[i] = DestinationError(f"Dropbox {items[i].path}: out of time "
                                                      "(too_many_write_operations)", retryable=True)
                    again = []
                else:
                    self._sleep(delay)
            pending = again
        return [r if r is not None else DestinationError("internal: no result") for r in results]


class DropboxOutput:
    """One file streaming to Dropbox; see the module docstring for the protocol."""

    def __init__(self, dest: DropboxDestination, relpath: str, path: str, deadline: float | None,
                 *, state: dict[str, Any] | None = None) -> None:
        self.path = path
        self.relpath = relpath
        self._dest = dest
        self._deadline = deadline
        self._buf = bytearray(dest.chunk_size)  # one preallocated chunk: no regrowth, no extra copies
        self._fill = 0
        self._session_id: str | None = None
        self._pending: Future[None] | None = None  # the chunk being uploaded by the uploader thread
        self._offset = 0  # bytes of this output sent to the session
        self._server_offset = 0  # bytes Dropbox said it holds (ahead of _offset after a resume)
        self._done = False
        self.reconciled = 0  # times Dropbox's offset corrected ours (a lost answer)
        self.resumed = state is not None
        if state is None:
            self._hasher = StreamHasher()
        else:
            self._hasher = StreamHasher.from_state(state["hasher"])
            self._session_id = state.get("session_id")
            self._offset = self._server_offset = int(state["offset"])
            if self._offset != self._hasher.size:
                raise DestinationError(f"cannot resume {path}: the saved state is inconsistent")
            tail = base64.b64decode(state.get("tail", ""))
            self._hasher.update(tail)
            self._buf[: len(tail)] = tail
            self._fill = len(tail)
            if self._hasher.size != int(state["position"]):
                raise DestinationError(f"cannot resume {path}: the saved state is inconsistent")

    @property
    def position(self) -> int:
        return self._hasher.size

    def write(self, data: bytes) -> None:
        if self._done:
            raise DestinationError(f"{self.path}: write after commit or abort")
        view = memoryview(data)
        chunk = self._dest.chunk_size
        while view:
            take = min(len(view), chunk - self._fill)
            piece = view[:take]
            self._hasher.update(piece)
            self._buf[self._fill : self._fill + take] = piece
            self._fill += take
            view = view[take:]
            if self._fill >= chunk:
                self._send(self._fill)

    def checkpoint(self) -> dict[str, Any]:
        """Upload every whole 4 MiB block written so far and return the JSON state to resume from.

        The tail after the last whole block (under 4 MiB) travels in the state, base64-encoded, so
        keep the state in blob storage rather than in a queue message. SHA-256 cannot be carried
        over: a resumed output reports `sha256 == ""`; the Dropbox content hash stays exact.
        """
        if self._done:
            raise DestinationError(f"{self.path}: checkpoint after commit or abort")
        whole = self._fill - self._fill % DROPBOX_BLOCK
        if whole:
            self._send(whole)
        self._wait()
        return {
            "kind": "dropbox",
            "relpath": self.relpath,
            "path": self.path,
            "session_id": self._session_id,
            "offset": self._offset,
            "hasher": self._hasher.state(),
            "tail": base64.b64encode(memoryview(self._buf)[: self._fill]).decode("ascii"),
            "position": self.position,
        }

    def commit(self) -> OutputResult:
        if self._done:
            raise DestinationError(f"{self.path}: commit twice")
        self._done = True
        self._wait()
        dest, client = self._dest, self._dest.client()
        h = self._hasher
        data = bytes(memoryview(self._buf)[: self._fill])
        self._buf, self._fill = bytearray(), 0
        commit_info = dbx_files.CommitInfo(self.path, mode=dbx_files.WriteMode.overwrite, mute=True)
        if self._session_id is None:
            try:
                meta = dest.call("files/upload", client.files_upload, data, self.path,
                                 mode=dbx_files.WriteMode.overwrite, mute=True,
                                 content_hash=h.content_hash, deadline=self._deadline)
            except ApiError as exc:
                raise dest.api_failure("files/upload", self.path, exc) from None
        else:
            meta = self._finish(client, data, commit_info)
        dest.verify(self.path, meta, h.size, h.content_hash)
        extra: dict[str, Any] = {"rev": meta.rev, "id": meta.id}
        if self.resumed:
            extra["resumed"] = True
        return OutputResult(meta.path_display or self.path, h.size, h.sha256, h.content_hash, extra)

    def abort(self) -> None:
        """Drop the buffer; an unfinished upload session is never committed and expires on its own."""
        self._done = True
        self._buf, self._fill = bytearray(), 0

    # -- internals ------------------------------------------------------------------------------

    def _send(self, n: int) -> None:
        """Hand the first `n` buffered bytes (a multiple of 4 MiB) to the uploader thread, after the
        previous chunk is stored: the caller keeps producing while a chunk travels, and memory stays
        at the buffer plus one chunk in flight."""
        self._wait()
        view = memoryview(self._buf)
        data = bytes(view[:n])  # the SDK wants bytes: the one copy of a chunk
        view[: self._fill - n] = view[n : self._fill]
        self._fill -= n
        del view
        content_hash = self._hasher.range_content_hash(self._offset, self._offset + n)
        self._pending = self._dest.uploader().submit(self._upload_chunk, data, content_hash)

    def _wait(self) -> None:
        """Block until the chunk in flight is stored; its error (if any) surfaces here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _upload_chunk(self, data: bytes, content_hash: str) -> None:
        dest, client = self._dest, self._dest.client()
        n = len(data)
        if self._session_id is None:
            try:
                result = dest.call("files/upload_session/start", client.files_upload_session_start, data,
                                   content_hash=content_hash, deadline=self._deadline)
            except ApiError as exc:
                raise dest.api_failure("files/upload_session/start", self.path, exc) from None
            self._session_id = result.session_id
            self._offset = self._server_offset = n
            return
        self._append(client, data, content_hash)

    def _append(self, client: dropbox.Dropbox, data: bytes, content_hash: str) -> None:
        dest, start, end = self._dest, self._offset, self._offset + len(data)
        if end <= self._server_offset:
            # Resumed from an older checkpoint: Dropbox already holds these bytes (our output is
            # regenerated identically; the content hash check at commit proves it).
            self._offset = end
            return
        sent_from = max(start, self._server_offset)
        while True:
            body = data if sent_from == start else data[sent_from - start:]
            cursor = dbx_files.UploadSessionCursor(self._session_id, sent_from)
            try:
                dest.call("files/upload_session/append_v2", client.files_upload_session_append_v2, body, cursor,
                          content_hash=content_hash if sent_from == start else None, deadline=self._deadline)
                self._offset = self._server_offset = end
                return
            except ApiError as exc:
                err = exc.error
                if not (isinstance(err, dbx_files.UploadSessionAppendError) and err.is_incorrect_offset()):
                    raise dest.api_failure("files/upload_session/append_v2", self.path, exc) from None
                correct = err.get_incorrect_offset().correct_offset
            self.reconciled += 1
            if correct >= end:
                # A lost answer (the chunk was stored), or a resume from an older checkpoint.
                log.info("Dropbox %s: the session already holds %d bytes (chunk %d-%d)", self.path, correct,
                         start, end)
                self._offset, self._server_offset = end, correct
                return
            if correct < start or self.reconciled > 2 * dest.max_attempts:
                raise DestinationError(
                    f"Dropbox {self.path}: the upload session holds {correct} bytes but this chunk starts at "
                    f"{start}; the bytes before it are gone, start this file again", retryable=False)
            log.info("Dropbox %s: session offset is %d, not %d; continuing from there", self.path, correct,
                     sent_from)
            sent_from = correct

    def _finish(self, client: dropbox.Dropbox, data: bytes, commit_info: Any) -> Any:
        dest, h = self._dest, self._hasher
        route = "files/upload_session/finish"
        sent_from = max(self._offset, min(self._server_offset, h.size))
        for _ in range(2 * dest.max_attempts):
            body = data[sent_from - self._offset:]
            cursor = dbx_files.UploadSessionCursor(self._session_id, sent_from)
            full = sent_from == self._offset and data
            try:
                return dest.call(route, client.files_upload_session_finish, body, cursor, commit_info,
                                 content_hash=h.range_content_hash(self._offset, h.size) if full else None,
                                 deadline=self._deadline)
            except ApiError as exc:
                summary = _describe_api_error(exc.error)
                if summary.startswith("lookup_failed/not_found"):
                    # Either an earlier finish was applied and its answer lost (the session is consumed),
                    # or the session expired: the file is there with our bytes, or this fails.
                    log.info("Dropbox %s: session gone at finish; checking the committed file", self.path)
                    try:
                        return dest.confirm_committed(self.path, h.size, h.content_hash, self._deadline)
                    except DestinationError:
                        raise dest.api_failure(route, self.path, exc) from None
                if summary.startswith("lookup_failed/incorrect_offset"):
                    correct = exc.error.get_lookup_failed().get_incorrect_offset().correct_offset
                    if self._offset <= correct <= h.size and correct != sent_from:
                        self.reconciled += 1
                        sent_from = correct
                        continue
                raise dest.api_failure(route, self.path, exc) from None
        raise DestinationError(f"Dropbox {self.path}: could not agree on the session offset to finish")
