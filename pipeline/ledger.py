"""The ledger: what was planned and done for each Alma job instance, as a pure state machine over a store.

Queue deliveries are at least once and workers on different machines run at the same time, so the
ledger is the one place that says which files of an export are done, who is working on which file,
and who writes the manifest. Each job instance is one compact JSON document (`jobs/{instance_id}.json`)
in a `Store`, changed only by conditional writes in a read-modify-write loop: a write based on a stale
read is refused and redone on a fresh read, so no update is ever lost.

The transitions (plan, claim, checkpoint, finish, fail, settle, claim manifest, manifest written,
release, sweep) are plain functions of a `JobRecord` and the time, so they can be tested
exhaustively without storage (tests/test_jobs_statemachine.py). Two stores: `MemoryStore` here, and
the ETag-conditional Azure Blob store in `pipeline/ledger_blob.py` (the only part that needs the
Azure SDK). The record schema is documented in docs/operations.md.

States of a file and of the instance: `pending`, `running`, `done`, `failed`. The instance also has
a `manifest` state (`pending` -> `writing` -> `done`, and back to `pending` when a write fails) so
that exactly one worker at a time writes manifest.json.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pipeline import jobindex
from pipeline.messages import check_id

log = logging.getLogger(__name__)

CONTAINER = "alma-pipeline"
PREFIX = "jobs/"
SCHEMA = 1
STATES = ("pending", "running", "done", "failed")
MANIFEST_STATES = ("pending", "writing", "done")
MAX_ERROR_CHARS = 2000
MAX_FILES = 5000  # files one job instance may plan: keeps the record (and the manifest) bounded

T = TypeVar("T")


class LedgerError(Exception):
    """The ledger cannot be read or changed as asked (bad blob, unknown instance or file)."""


class LedgerConflict(LedgerError):
    """Too many concurrent writers: the conditional write kept failing for the bounded retries."""


class LeaseLost(LedgerError):
    """A worker tried to checkpoint a file that another worker has taken over (or finished)."""


class StoreConflict(Exception):
    """A conditional write was refused: the document changed (or appeared) since it was read."""


def iso(ts: float) -> str:
    """A ledger timestamp: UTC, milliseconds, `Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


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
    info: dict[str, Any] = field(default_factory=dict)  # what the plan said (size, stem, ...)
    touched_at: str | None = None  # last change of this file's state: how the sweeper tells stale work
    sweeps: int = 0  # times the sweeper re-sent this file because nothing was in flight for it

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

    def has_file(self, name: str) -> bool:
        return any(f.name == name for f in self.files)

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
        # Field by field rather than dataclasses.asdict: that deep-copies every checkpoint first.
        data = {k: v for k, v in vars(self).items() if k != "etag"}
        data["files"] = [vars(f) for f in self.files]
        data["manifest"] = vars(self.manifest)
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


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _build(cls: type[T], data: Any, **extra: Any) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} is not an object")
    unknown = set(data) - _field_names(cls)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {cls.__name__}")
    return cls(**data, **extra)


# ---- transitions: plain functions of a record and the time (seconds since the epoch) -------------------


def plan(record: JobRecord, job: dict[str, Any], files: list[FileState], message: dict[str, Any] | None,
         now: float) -> bool:
    """Record the plan once; False (and no change) when the instance is already planned."""
    if record.planned_at is not None:
        return False
    record.job = dict(job)
    record.files = [FileState(**{**asdict(s), "touched_at": iso(now)}) for s in files]
    record.planned_at = iso(now)
    record.state = "pending"
    record.finished_at = None
    record.manifest = ManifestState()
    if message is not None:
        record.message = message
    return True


def mark(record: JobRecord, state: str, message: dict[str, Any] | None, info: dict[str, Any], now: float) -> None:
    """Set the instance state and add `info`; a finished state stamps `finished_at`."""
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
    record.state = state
    record.info.update(info)
    if message is not None:
        record.message = message
    if state == "running" and record.started_at is None:
        record.started_at = iso(now)
    if state in ("done", "failed"):
        record.finished_at = iso(now)


def _leased(lease_until: str | None, now: float) -> bool:
    return bool(lease_until) and epoch(lease_until) > now  # type: ignore[arg-type]


def claim(record: JobRecord, name: str, worker_id: str, lease_seconds: float, now: float) -> FileState | None:
    """Take a file, or None when it is settled or leased to a live worker (an expired lease is taken over)."""
    f = record.file(name)
    if f.settled() or (f.state == "running" and _leased(f.lease_until, now)):
        return None
    if f.state == "pending" and f.checkpoint is not None:
        f.continuations += 1
    else:
        f.attempts += 1
    f.state, f.worker, f.lease_until = "running", worker_id, iso(now + lease_seconds)
    f.started_at = f.started_at or iso(now)
    f.touched_at = iso(now)
    if record.state == "pending":
        record.state = "running"
    record.started_at = record.started_at or iso(now)
    return FileState(**asdict(f))


def checkpoint(record: JobRecord, name: str, state: dict[str, Any], worker_id: str | None, release: bool,
               lease_seconds: float | None, now: float) -> FileState:
    """Save where a file's work stands; release=True hands it to a continuation (back to `pending`)."""
    f = record.file(name)
    if f.state != "running" or (worker_id is not None and f.worker != worker_id):
        raise LeaseLost(f"job instance {record.instance_id} file {name!r} is {f.state}"
                        + (f" (worker {f.worker})" if f.worker else "")
                        + f"; worker {worker_id} no longer holds it")
    f.checkpoint, f.checkpointed_at, f.touched_at = state, iso(now), iso(now)
    if release:
        f.state, f.worker, f.lease_until = "pending", None, None
    elif lease_seconds is not None:
        f.lease_until = iso(now + lease_seconds)
    return FileState(**asdict(f))


def finish(record: JobRecord, name: str, result: dict[str, Any], worker_id: str | None, now: float,
           manifest_lease: float) -> bool:
    """Mark a file done; True to the one caller whose write settled the last file (it writes the manifest)."""
    f = record.file(name)
    if f.state == "done":
        return False
    f.state, f.result, f.error, f.retryable = "done", result, None, False
    f.worker, f.lease_until, f.checkpoint = None, None, None
    f.finished_at = f.touched_at = iso(now)
    return settle(record, worker_id, now, manifest_lease)


def fail(record: JobRecord, name: str, error: str, attempts: int, retryable: bool, worker_id: str | None,
         now: float, manifest_lease: float) -> bool:
    """Record why a file failed; retryable=False settles it for good. A file another worker holds
    under a live lease keeps running (a poisoned duplicate must not fail work still going on)."""
    f = record.file(name)
    if f.state == "done":
        return False
    if f.state == "running" and f.worker != worker_id and _leased(f.lease_until, now):
        f.error = str(error)[:MAX_ERROR_CHARS]
        return False
    f.state, f.error, f.retryable = "failed", str(error)[:MAX_ERROR_CHARS], retryable
    f.attempts = max(f.attempts, int(attempts))
    f.worker, f.lease_until = None, None
    f.finished_at = f.touched_at = iso(now)
    if retryable:
        return False
    return settle(record, worker_id, now, manifest_lease)


def settle(record: JobRecord, worker_id: str | None, now: float, lease: float) -> bool:
    """When every file is settled and nobody writes the manifest yet, the caller takes it."""
    if not record.settled() or record.manifest.state != "pending":
        return False
    m = record.manifest
    m.state, m.worker, m.lease_until = "writing", worker_id, iso(now + lease)
    return True


def claim_manifest(record: JobRecord, worker_id: str, lease_seconds: float, now: float) -> bool:
    """Take over writing manifest.json: every file settled, not written, nobody holding a live lease."""
    m = record.manifest
    if not record.settled() or m.state == "done":
        return False
    if m.state == "writing" and _leased(m.lease_until, now):
        return False
    m.state, m.worker, m.lease_until = "writing", worker_id, iso(now + lease_seconds)
    return True


def release_manifest(record: JobRecord, worker_id: str | None, error: str) -> bool:
    """A manifest write failed: give the claim back so the next delivery or sweep writes it."""
    m = record.manifest
    if m.state != "writing" or m.worker != worker_id:
        return False
    m.state, m.worker, m.lease_until = "pending", None, None
    record.info["manifest_error"] = str(error)[:MAX_ERROR_CHARS]
    return True


def manifest_written(record: JobRecord, location: str, now: float) -> None:
    """The manifest is in place: the instance ends `done`, or `failed` if any file failed."""
    m = record.manifest
    m.state, m.location, m.written_at = "done", location, iso(now)
    m.worker = m.lease_until = None
    record.info.pop("manifest_error", None)
    record.state = "done" if all(f.state == "done" for f in record.files) else "failed"
    record.finished_at = iso(now)


def reset_failed(record: JobRecord, now: float) -> list[str]:
    """Failed files, and running files whose lease lapsed, back to `pending` for an operator's re-run."""
    names = []
    for f in record.files:
        stuck = f.state == "running" and not _leased(f.lease_until, now)
        if f.state == "failed" or stuck:
            f.state, f.retryable, f.worker, f.lease_until, f.finished_at = "pending", False, None, None, None
            f.checkpoint = f.checkpointed_at = None  # a re-run starts the file afresh
            f.touched_at, f.sweeps = iso(now), 0
            names.append(f.name)
    if names or record.state == "failed":
        record.state = "running" if any(f.state == "done" for f in record.files) else "pending"
        record.finished_at = None
        record.manifest = ManifestState()
    return names


@dataclass
class SweepResult:
    """What one sweep found for an instance: files to send again, files it failed, a manifest to write."""

    resend: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    complete: bool = False


def sweep(record: JobRecord, worker_id: str, now: float, stale_after: float, max_sweeps: int,
          manifest_lease: float) -> SweepResult:
    """Find work nobody is doing: a file with an expired lease, or pending/retryable with no change
    for `stale_after` seconds, is re-sent (at most `max_sweeps` times, then failed for good); a
    settled instance without its manifest (and no live writer) is claimed for completion."""
    out = SweepResult()
    if record.planned_at is None or record.manifest.state == "done":
        return out
    for f in record.files:
        if f.settled():
            continue
        if f.state == "running":
            if _leased(f.lease_until, now):
                continue
        else:
            touched = f.touched_at or record.updated_at or record.planned_at
            if touched and epoch(touched) > now - stale_after:
                continue
        if f.sweeps >= max_sweeps:
            error = f"no progress after {f.sweeps} re-sends by the sweeper" + (f"; last error: {f.error}" if f.error
                                                                               else "")
            f.state, f.error, f.retryable = "failed", error[:MAX_ERROR_CHARS], False
            f.worker = f.lease_until = None
            f.finished_at = f.touched_at = iso(now)
            out.failed.append(f.name)
        else:
            f.sweeps += 1
            f.touched_at = iso(now)
            out.resend.append(f.name)
    if record.settled():
        out.complete = claim_manifest(record, worker_id, manifest_lease, now)
    return out


# ---- stores ----------------------------------------------------------------------------------------------


class Store(Protocol):
    """Where ledger documents live: conditional writes are the whole concurrency story."""

    name: str

    def read(self, key: str) -> tuple[bytes, str] | None:
        """The document and its version tag, or None when it does not exist."""
        ...

    def write(self, key: str, data: bytes, etag: str | None) -> str:
        """Write if the stored version is still `etag` (None: only if absent); raises StoreConflict."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`."""
        ...


class MemoryStore:
    """A store in a dict, for the CLI's replay, the demo's fast path and the state-machine tests."""

    name = "memory"

    def __init__(self) -> None:
        self.docs: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._version = 0

    def read(self, key: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self.docs.get(key)

    def write(self, key: str, data: bytes, etag: str | None) -> str:
        with self._lock:
            current = self.docs.get(key)
            if (current is None) != (etag is None) or (current is not None and current[1] != etag):
                raise StoreConflict(key)
            self._version += 1
            tag = f"v{self._version}"
            self.docs[key] = (bytes(data), tag)
            return tag

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self.docs if k.startswith(prefix))


# ---- the ledger: transitions applied to a store in a read-modify-write loop --------------------------------


class Ledger:
    """Per job instance plan and per file state, safe under concurrent writers."""

    def __init__(
        self,
        connection_string: str | None = None,
        container: str = CONTAINER,
        *,
        service: Any = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 50,
    ) -> None:
        if store is None:
            from pipeline.ledger_blob import BlobStore  # the Azure SDK only when blob storage is used

            store = BlobStore.connect(connection_string, container, service=service)
        self.store = store
        self.container = store.name
        self.clock = clock
        self.max_attempts = max_attempts

    @classmethod
    def from_settings(cls, container: str = CONTAINER) -> Ledger:
        """The app's ledger: blob storage from AzureWebJobsStorage (or managed identity)."""
        from pipeline.ledger_blob import BlobStore

        return cls(store=BlobStore.from_settings(container))

    @classmethod
    def in_memory(cls, clock: Callable[[], float] = time.time) -> Ledger:
        return cls(store=MemoryStore(), clock=clock)

    # ---- reading -------------------------------------------------------------------------------

    def blob_name(self, instance_id: str) -> str:
        return f"{PREFIX}{check_id(instance_id)}.json"

    def get(self, instance_id: str) -> JobRecord | None:
        """The record as stored now, or None when the instance was never recorded."""
        got = self._read(instance_id)
        return got[0] if got is not None else None

    def _read(self, instance_id: str) -> tuple[JobRecord, bytes] | None:
        name = self.blob_name(instance_id)
        got = self.store.read(name)
        if got is None:
            return None
        raw, etag = got
        record = JobRecord.from_json(raw, f"ledger blob {self.container}/{name}")
        if record.instance_id != instance_id:
            raise LedgerError(
                f"ledger blob {self.container}/{name} holds instance {record.instance_id!r}; fix or delete it"
            )
        record.etag = etag
        return record, raw

    def list_instances(self) -> list[JobRecord]:
        """Every recorded job instance, newest first; unreadable documents are logged and skipped."""
        records = []
        for name in self.store.keys(PREFIX):
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

    def index_page(self, size: int, token: str | None = None, *, at_least: int = 0) -> jobindex.Page:
        """One page of instance summaries, newest first, in one storage read (pipeline/jobindex.py);
        an in-memory ledger sorts its records instead."""
        container = getattr(self.store, "container", None)
        if container is None:
            return jobindex.page_of(self.list_instances(), size, token, at_least=at_least)
        return jobindex.read_page(container, size, token, at_least=at_least)

    def reindex(self) -> tuple[int, int]:
        """Rebuild the job index from every ledger record: (entries written, stale entries removed)."""
        container = getattr(self.store, "container", None)
        if container is None:
            return 0, 0
        return jobindex.rebuild(container, self.list_instances())

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
        container = getattr(self.store, "container", None)  # blob storage keeps the status page's index
        for attempt in range(self.max_attempts):
            got = self._read(instance_id)
            if got is None:
                if create is None:
                    raise LedgerError(f"no ledger record for job instance {instance_id}")
                record, before = create(), b""
            else:
                record, before = got  # what we wrote is to_json's own form: comparing bytes needs no re-encoding
            listed = jobindex.stored(record) if record.etag and container is not None else None
            result = fn(record)
            if record.etag and record.to_json() == before:
                return record, result
            record.updated_at = iso(self.clock())
            data = record.to_json()
            try:
                etag = self.store.write(name, data, record.etag)
            except StoreConflict:
                log.debug("ledger %s: conflict on attempt %d, retrying", name, attempt + 1)
                time.sleep(random.uniform(0, min(0.5, 0.004 * 2**attempt)))
                continue
            record.etag = etag
            if container is not None:  # the status page's newest-first listing
                jobindex.write(container, record, listed)
            return record, result
        raise LedgerConflict(
            f"ledger blob {self.container}/{name}: gave up after {self.max_attempts} conflicting writes"
        )

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
        if len(files) > MAX_FILES:
            raise ValueError(f"job instance {instance_id} has {len(files)} files; at most {MAX_FILES} are planned")
        states: list[FileState] = []
        for f in files:
            name = f.get("name") if isinstance(f, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"every planned file needs a non-empty 'name', got {f!r}")
            if any(s.name == name for s in states):
                raise ValueError(f"file {name!r} is planned twice for job instance {instance_id}")
            states.append(FileState(name=name, info={k: v for k, v in f.items() if k != "name"}))
        return self._transact(instance_id, lambda r: plan(r, job, states, message, self.clock()),
                              create=lambda: JobRecord(instance_id=instance_id))

    def mark_instance(
        self, instance_id: str, state: str, *, message: dict[str, Any] | None = None, **info: Any
    ) -> JobRecord:
        """Set the instance state and add `info` (e.g. error=...); creates the record if missing,
        so a job that failed before it was planned is still recorded (with its message)."""
        return self._transact(instance_id, lambda r: mark(r, state, message, info, self.clock()),
                              create=lambda: JobRecord(instance_id=instance_id))[0]

    # ---- files ---------------------------------------------------------------------------------

    def claim_file(self, instance_id: str, name: str, worker_id: str, lease_seconds: float) -> FileState | None:
        """Take a file to work on (see `claim`); the returned state carries the last checkpoint."""
        return self.claim_file_in(instance_id, name, worker_id, lease_seconds)[1]

    def claim_file_in(self, instance_id: str, name: str, worker_id: str,
                      lease_seconds: float) -> tuple[JobRecord, FileState | None]:
        """`claim_file`, with the record as the claim left it (one read instead of two)."""
        return self._transact(instance_id, lambda r: claim(r, name, worker_id, lease_seconds, self.clock()))

    def checkpoint_file(self, instance_id: str, name: str, state: dict[str, Any], *, worker_id: str | None = None,
                        release: bool = True, lease_seconds: float | None = None) -> FileState:
        """Save where a file's work stands (see `checkpoint`); LeaseLost if `worker_id` lost the file."""
        return self._transact(instance_id, lambda r: checkpoint(r, name, state, worker_id, release, lease_seconds,
                                                                self.clock()))[1]

    def finish_file(self, instance_id: str, name: str, result: dict[str, Any], *, worker_id: str | None = None,
                    manifest_lease_seconds: float = 600) -> bool:
        """Mark a file done; True to exactly one caller, the one whose write settled the last file."""
        return self._transact(instance_id, lambda r: finish(r, name, result, worker_id, self.clock(),
                                                            manifest_lease_seconds))[1]

    def fail_file(self, instance_id: str, name: str, error: str, attempts: int, *, retryable: bool = False,
                  worker_id: str | None = None, manifest_lease_seconds: float = 600) -> bool:
        """Record why a file failed (see `fail`); True, like finish_file, to the caller that settled the job."""
        return self._transact(instance_id, lambda r: fail(r, name, error, attempts, retryable, worker_id,
                                                          self.clock(), manifest_lease_seconds))[1]

    def claim_manifest(self, instance_id: str, worker_id: str, lease_seconds: float = 600) -> bool:
        """Take over writing manifest.json (the writer may have died or failed): False when done or held."""
        return self._transact(instance_id, lambda r: claim_manifest(r, worker_id, lease_seconds, self.clock()))[1]

    def release_manifest(self, instance_id: str, worker_id: str | None, error: str) -> bool:
        """Give a manifest claim back after a failed write."""
        return self._transact(instance_id, lambda r: release_manifest(r, worker_id, error))[1]

    def manifest_written(self, instance_id: str, location: str) -> JobRecord:
        """The manifest is in place: the instance ends `done`, or `failed` if any file failed."""
        return self._transact(instance_id, lambda r: manifest_written(r, location, self.clock()))[0]

    def reset_failed(self, instance_id: str) -> list[str]:
        """Put failed and stuck files back to `pending` and reopen the instance (see `reset_failed`)."""
        return self._transact(instance_id, lambda r: reset_failed(r, self.clock()))[1]

    def sweep(self, instance_id: str, worker_id: str, stale_after: float, max_sweeps: int,
              manifest_lease_seconds: float = 600) -> tuple[JobRecord, SweepResult]:
        """One sweep of one instance (see `sweep`): the record as swept, and what was found."""
        return self._transact(instance_id, lambda r: sweep(r, worker_id, self.clock(), stale_after, max_sweeps,
                                                           manifest_lease_seconds))
