"""The ledger: what was planned and done for each Alma job instance, in Azure Blob Storage.

Queue deliveries are at least once and workers on different machines run at the same time, so the
ledger is the one place that says which files of an export are done, who is working on which file,
and who writes the manifest. Each job instance is one compact JSON blob
(`jobs/{instance_id}.json` in container `alma-pipeline`), changed only by ETag-conditional writes
in a read-modify-write loop: a write based on a stale read fails with 412 (or 409 on create) and is
redone on a fresh read, so no update is ever lost. The blob schema is documented in
docs/operations.md.

States of a file and of the instance: `pending`, `running`, `done`, `failed`. The instance also has
a `manifest` state (`pending` -> `writing` -> `done`) so that exactly one worker, the one whose
write settled the last file, writes manifest.json.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from pipeline import settings

log = logging.getLogger(__name__)

CONTAINER = "alma-pipeline"
PREFIX = "jobs/"
SCHEMA = 1
STATES = ("pending", "running", "done", "failed")
MANIFEST_STATES = ("pending", "writing", "done")
MAX_ERROR_CHARS = 2000
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

T = TypeVar("T")


class LedgerError(Exception):
    """The ledger cannot be read or changed as asked (bad blob, unknown instance or file)."""


class LedgerConflict(LedgerError):
    """Too many concurrent writers: the conditional write kept failing for the bounded retries."""


class LeaseLost(LedgerError):
    """A worker tried to checkpoint a file that another worker has taken over (or finished)."""


def storage_client(cls: type[T], service: str, *args: Any, **kwargs: Any) -> T:
    """Build a blob or queue client from `AzureWebJobsStorage` or, with managed identity,
    `AzureWebJobsStorage__accountName` (the same two ways the Functions host connects)."""
    conn = settings.get("AzureWebJobsStorage")
    if conn:
        return cls.from_connection_string(conn, *args, **kwargs)  # type: ignore[attr-defined]
    account = settings.get("AzureWebJobsStorage__accountName")
    if account:
        from azure.identity import DefaultAzureCredential  # only needed in Azure; slow to import

        url = f"https://{account}.{service}.core.windows.net"
        return cls(url, *args, credential=DefaultAzureCredential(), **kwargs)
    raise settings.SettingError(
        "AzureWebJobsStorage",
        "is not set, and neither is AzureWebJobsStorage__accountName (storage through managed identity)",
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass
class FileState:
    """One export file of a job instance and what happened to it."""

    name: str
    state: str = "pending"
    attempts: int = 0  # claims that started or took over the file (continuations excluded)
    continuations: int = 0  # claims that resumed a checkpoint released by checkpoint_file
    retryable: bool = False  # a failed file that may be claimed again
    worker: str | None = None
    lease_until: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    checkpoint: dict[str, Any] | None = None
    checkpointed_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the plan said (size, path, ...)

    def settled(self) -> bool:
        """Done, or failed for good: nothing more will happen to this file without an operator."""
        return self.state == "done" or (self.state == "failed" and not self.retryable)


@dataclass
class ManifestState:
    state: str = "pending"
    worker: str | None = None
    lease_until: str | None = None
    location: str | None = None
    written_at: str | None = None


@dataclass
class JobRecord:
    """The ledger record of one job instance (one blob)."""

    instance_id: str
    state: str = "pending"
    job: dict[str, Any] = field(default_factory=dict)
    message: dict[str, Any] | None = None  # the original alma-export-jobs queue message, for requeue
    planned_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    files: list[FileState] = field(default_factory=list)
    manifest: ManifestState = field(default_factory=ManifestState)
    info: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    etag: str | None = field(default=None, compare=False)  # of the blob this was read from; not stored

    def file(self, name: str) -> FileState:
        for f in self.files:
            if f.name == name:
                return f
        raise LedgerError(f"job instance {self.instance_id} has no file {name!r} in its plan")

    def settled(self) -> bool:
        """Every planned file is done or failed for good (and there is a plan)."""
        return self.planned_at is not None and all(f.settled() for f in self.files)

    def totals(self) -> dict[str, int]:
        """Sums of the integer counts in the files' results (records_out, rejected, ...)."""
        out: dict[str, int] = {}
        for f in self.files:
            for key, value in (f.result or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    out[key] = out.get(key, 0) + value
        return out

    def to_json(self) -> bytes:
        data = asdict(self)
        data.pop("etag")
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, where: str = "ledger record") -> JobRecord:
        """Parse and check a ledger blob; anything unexpected is a LedgerError naming the blob."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"{where} is not valid JSON ({exc}); fix or delete the blob") from None
        try:
            if not isinstance(data, dict):
                raise TypeError("top level is not an object")
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
            files = [_build(FileState, f) for f in data.pop("files", [])]
            manifest = _build(ManifestState, data.pop("manifest", {}))
            record = _build(cls, data, files=files, manifest=manifest)
            if not isinstance(record.instance_id, str) or not record.instance_id:
                raise ValueError("instance_id is missing")
            for thing, allowed in [(record, STATES), *((f, STATES) for f in files), (manifest, MANIFEST_STATES)]:
                if thing.state not in allowed:
                    raise ValueError(f"unknown state {thing.state!r}")
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"{where} is not a valid ledger record: {exc}; fix or delete the blob") from None
        return record


def _build(cls: type[T], data: Any, **extra: Any) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} is not an object")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {cls.__name__}")
    return cls(**data, **extra)


class Ledger:
    """Per job instance plan and per file state, in blob storage, safe under concurrent writers."""

    def __init__(
        self,
        connection_string: str | None = None,
        container: str = CONTAINER,
        *,
        service: BlobServiceClient | None = None,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 50,
    ) -> None:
        if service is None:
            if not connection_string:
                raise ValueError("Ledger needs a connection string or a BlobServiceClient")
            service = BlobServiceClient.from_connection_string(connection_string)
        self._container = service.get_container_client(container)
        self.container = container
        self.clock = clock
        self.max_attempts = max_attempts

    @classmethod
    def from_settings(cls, container: str = CONTAINER) -> Ledger:
        """The app's ledger: storage from AzureWebJobsStorage (or managed identity)."""
        return cls(container=container, service=storage_client(BlobServiceClient, "blob"))

    # ---- reading -------------------------------------------------------------------------------

    def blob_name(self, instance_id: str) -> str:
        if not isinstance(instance_id, str) or not _INSTANCE_ID.match(instance_id):
            raise ValueError(f"job instance id {instance_id!r} is not a plain id (letters, digits, . _ -)")
        return f"{PREFIX}{instance_id}.json"

    def get(self, instance_id: str) -> JobRecord | None:
        """The record as stored now, or None when the instance was never recorded."""
        name = self.blob_name(instance_id)
        try:
            download = self._container.get_blob_client(name).download_blob()
            raw = download.readall()
        except ResourceNotFoundError:
            return None
        record = JobRecord.from_json(raw, f"ledger blob {self.container}/{name}")
        if record.instance_id != instance_id:
            raise LedgerError(
                f"ledger blob {self.container}/{name} holds instance {record.instance_id!r}; fix or delete it"
            )
        record.etag = download.properties.etag
        return record

    def list_instances(self) -> list[JobRecord]:
        """Every recorded job instance, newest first; unreadable blobs are logged and skipped."""
        records = []
        try:
            names = [b.name for b in self._container.list_blobs(name_starts_with=PREFIX)]
        except ResourceNotFoundError:
            return []
        for name in names:
            instance_id = name[len(PREFIX):].removesuffix(".json")
            try:
                record = self.get(instance_id)
            except (LedgerError, ValueError) as exc:
                log.error("skipping %s: %s", name, exc)
                continue
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: r.planned_at or r.updated_at or "", reverse=True)
        return records

    # ---- the read-modify-write loop ------------------------------------------------------------

    def _transact(
        self,
        instance_id: str,
        fn: Callable[[JobRecord], T],
        create: Callable[[], JobRecord] | None = None,
    ) -> tuple[JobRecord, T]:
        """Apply `fn` to a fresh read and write it back only if nobody wrote in between.

        `fn` mutates the record and may run several times (once per conflict), so it must not
        have other side effects. When it changes nothing, nothing is written.
        """
        name = self.blob_name(instance_id)
        blob = self._container.get_blob_client(name)
        for attempt in range(self.max_attempts):
            record = self.get(instance_id)
            if record is None:
                if create is None:
                    raise LedgerError(f"no ledger record for job instance {instance_id}")
                record = create()
            before = record.to_json() if record.etag else b""
            result = fn(record)
            if record.etag and record.to_json() == before:
                return record, result
            record.updated_at = _iso(self.clock())
            options: dict[str, Any] = (
                {"etag": record.etag, "match_condition": MatchConditions.IfNotModified}
                if record.etag
                else {"match_condition": MatchConditions.IfMissing}
            )
            try:
                etag = self._write(blob, record.to_json(), options)
            except HttpResponseError as exc:
                if exc.status_code not in (409, 412):  # 412: If-Match failed; 409/412: If-None-Match:*
                    raise
                log.debug("ledger %s: conflict %s on attempt %d, retrying", name, exc.status_code, attempt + 1)
                time.sleep(random.uniform(0, min(0.5, 0.004 * 2**attempt)))
                continue
            record.etag = etag
            return record, result
        raise LedgerConflict(
            f"ledger blob {self.container}/{name}: gave up after {self.max_attempts} conflicting writes"
        )

    def _write(self, blob: Any, data: bytes, options: dict[str, Any]) -> str:
        content = ContentSettings(content_type="application/json")
        try:
            return blob.upload_blob(data, overwrite=True, content_settings=content, **options)["etag"]
        except ResourceNotFoundError as exc:  # first write ever: create the container, then retry
            if getattr(exc, "error_code", None) != "ContainerNotFound":
                raise
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass
            return blob.upload_blob(data, overwrite=True, content_settings=content, **options)["etag"]

    def update(self, instance_id: str, fn: Callable[[JobRecord], Any]) -> JobRecord:
        """Change a record with `fn` (which mutates it; it may run more than once) and return it."""
        return self._transact(instance_id, fn)[0]

    # ---- plan and instance ---------------------------------------------------------------------

    def create_plan(
        self,
        instance_id: str,
        job: dict[str, Any],
        files: list[dict[str, Any]],
        *,
        message: dict[str, Any] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Record the plan of a job instance once: a second call returns the stored plan, False.

        `files` are dicts with at least "name"; the rest is kept as the file's `info`. `message`
        is the original alma-export-jobs queue message, kept so `requeue` can send it again.
        """
        states = []
        for f in files:
            name = f.get("name") if isinstance(f, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"every planned file needs a non-empty 'name', got {f!r}")
            if any(s.name == name for s in states):
                raise ValueError(f"file {name!r} is planned twice for job instance {instance_id}")
            states.append(FileState(name=name, info={k: v for k, v in f.items() if k != "name"}))

        def plan(record: JobRecord) -> bool:
            if record.planned_at is not None:
                return False
            now = _iso(self.clock())
            record.job = dict(job)
            record.files = [FileState(**asdict(s)) for s in states]
            record.planned_at = now
            record.state = "pending"
            record.finished_at = None
            record.manifest = ManifestState()
            if message is not None:
                record.message = message
            return True

        return self._transact(instance_id, plan, create=lambda: JobRecord(instance_id=instance_id))

    def mark_instance(
        self, instance_id: str, state: str, *, message: dict[str, Any] | None = None, **info: Any
    ) -> JobRecord:
        """Set the instance state and add `info` (e.g. error=...); creates the record if missing,
        so a job that failed before it was planned is still recorded (with its message)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")

        def mark(record: JobRecord) -> None:
            now = _iso(self.clock())
            record.state = state
            record.info.update(info)
            if message is not None:
                record.message = message
            if state == "running" and record.started_at is None:
                record.started_at = now
            if state in ("done", "failed"):
                record.finished_at = now

        return self._transact(instance_id, mark, create=lambda: JobRecord(instance_id=instance_id))[0]

    # ---- files ---------------------------------------------------------------------------------

    def claim_file(self, instance_id: str, name: str, worker_id: str, lease_seconds: float) -> FileState | None:
        """Take a file to work on, or None when it is done, failed for good, or leased to a live worker.

        A running file whose lease expired is claimed again: its worker was probably killed. The
        returned state carries the last checkpoint, if any, to resume from.
        """

        def claim(record: JobRecord) -> FileState | None:
            f = record.file(name)
            now = self.clock()
            if f.state == "done" or (f.state == "failed" and not f.retryable):
                return None
            if f.state == "running" and f.lease_until and _epoch(f.lease_until) > now:
                return None
            if f.state == "pending" and f.checkpoint is not None:
                f.continuations += 1
            else:
                f.attempts += 1
            f.state = "running"
            f.worker = worker_id
            f.lease_until = _iso(now + lease_seconds)
            f.started_at = f.started_at or _iso(now)
            if record.state == "pending":
                record.state = "running"
            record.started_at = record.started_at or _iso(now)
            return FileState(**asdict(f))

        return self._transact(instance_id, claim)[1]

    def checkpoint_file(
        self,
        instance_id: str,
        name: str,
        checkpoint: dict[str, Any],
        *,
        worker_id: str | None = None,
        release: bool = True,
        lease_seconds: float | None = None,
    ) -> FileState:
        """Save where a file's work stands.

        release=True (a continuation): the file goes back to `pending` with its checkpoint, and the
        next claim resumes there. release=False: the worker keeps the file and may extend its lease.
        With `worker_id`, a worker that lost its lease gets LeaseLost instead of overwriting.
        """

        def save(record: JobRecord) -> FileState:
            f = record.file(name)
            if f.state != "running" or (worker_id is not None and f.worker != worker_id):
                raise LeaseLost(
                    f"job instance {instance_id} file {name!r} is {f.state}"
                    + (f" (worker {f.worker})" if f.worker else "")
                    + f"; worker {worker_id} no longer holds it"
                )
            now = self.clock()
            f.checkpoint = checkpoint
            f.checkpointed_at = _iso(now)
            if release:
                f.state, f.worker, f.lease_until = "pending", None, None
            elif lease_seconds is not None:
                f.lease_until = _iso(now + lease_seconds)
            return FileState(**asdict(f))

        return self._transact(instance_id, save)[1]

    def finish_file(
        self,
        instance_id: str,
        name: str,
        result: dict[str, Any],
        *,
        worker_id: str | None = None,
        manifest_lease_seconds: float = 600,
    ) -> bool:
        """Mark a file done with its result (counts, output paths, hashes).

        Returns True to exactly one caller: the one whose write settled the last file. That caller
        writes manifest.json and then calls `manifest_written`. A file already done is left alone
        (False), so redeliveries are harmless.
        """

        def finish(record: JobRecord) -> bool:
            f = record.file(name)
            if f.state == "done":
                return False
            now = self.clock()
            f.state, f.result, f.error, f.retryable = "done", result, None, False
            f.worker, f.lease_until, f.checkpoint = None, None, None
            f.finished_at = _iso(now)
            return self._settle(record, worker_id, now, manifest_lease_seconds)

        return self._transact(instance_id, finish)[1]

    def fail_file(
        self,
        instance_id: str,
        name: str,
        error: str,
        attempts: int,
        *,
        retryable: bool = False,
        worker_id: str | None = None,
        manifest_lease_seconds: float = 600,
    ) -> bool:
        """Record why a file failed. retryable=False (a poison message) settles it for good.

        A file that another worker holds under a live lease keeps running (only the error is
        noted): a poisoned duplicate message must not fail work that is still going on.

        Returns True, like finish_file, to the one caller whose write settled the last file: it
        writes the manifest (listing the failure) and notifies. A file already done is left alone.
        """

        def fail(record: JobRecord) -> bool:
            f = record.file(name)
            if f.state == "done":
                return False
            now = self.clock()
            if f.state == "running" and f.worker != worker_id and f.lease_until and _epoch(f.lease_until) > now:
                # A duplicate message gave up while another worker holds the file: that worker
                # decides. Keep the error for the record; the file stays running.
                f.error = str(error)[:MAX_ERROR_CHARS]
                return False
            f.state, f.error, f.retryable = "failed", str(error)[:MAX_ERROR_CHARS], retryable
            f.attempts = max(f.attempts, int(attempts))
            f.worker, f.lease_until = None, None
            f.finished_at = _iso(now)
            if retryable:
                return False
            return self._settle(record, worker_id, now, manifest_lease_seconds)

        return self._transact(instance_id, fail)[1]

    def _settle(self, record: JobRecord, worker_id: str | None, now: float, lease: float) -> bool:
        if not record.settled() or record.manifest.state != "pending":
            return False
        record.manifest.state = "writing"
        record.manifest.worker = worker_id
        record.manifest.lease_until = _iso(now + lease)
        return True

    def claim_manifest(self, instance_id: str, worker_id: str, lease_seconds: float = 600) -> bool:
        """Take over writing manifest.json when every file is settled and nobody holds it (the
        writer may have died after finish_file returned True). False when done or held."""

        def claim(record: JobRecord) -> bool:
            now = self.clock()
            m = record.manifest
            if not record.settled() or m.state == "done":
                return False
            if m.state == "writing" and m.lease_until and _epoch(m.lease_until) > now:
                return False
            m.state, m.worker, m.lease_until = "writing", worker_id, _iso(now + lease_seconds)
            return True

        return self._transact(instance_id, claim)[1]

    def manifest_written(self, instance_id: str, location: str) -> JobRecord:
        """The manifest is in place: the instance ends `done`, or `failed` if any file failed."""

        def written(record: JobRecord) -> None:
            now = _iso(self.clock())
            record.manifest.state, record.manifest.location = "done", location
            record.manifest.written_at = now
            record.manifest.worker = record.manifest.lease_until = None
            record.state = "done" if all(f.state == "done" for f in record.files) else "failed"
            record.finished_at = now

        return self._transact(instance_id, written)[0]

    def reset_failed(self, instance_id: str) -> list[str]:
        """Put failed files (and running files whose lease lapsed: their worker died and no message
        is left for them) back to `pending` for a re-run, and reopen the instance and manifest.

        Returns the names of the files reset; they restart from the beginning (checkpoints are
        dropped). Their last error and attempts stay for the record.
        """

        def reset(record: JobRecord) -> list[str]:
            names = []
            now = self.clock()
            for f in record.files:
                stuck = f.state == "running" and (f.lease_until is None or _epoch(f.lease_until) <= now)
                if f.state == "failed" or stuck:
                    f.state, f.retryable, f.worker, f.lease_until, f.finished_at = "pending", False, None, None, None
                    f.checkpoint = f.checkpointed_at = None  # a re-run starts the file afresh
                    names.append(f.name)
            if names or record.state == "failed":
                record.state = "running" if any(f.state == "done" for f in record.files) else "pending"
                record.finished_at = None
                record.manifest = ManifestState()
            return names

        return self._transact(instance_id, reset)[1]
