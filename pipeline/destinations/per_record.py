"""One output file per record (`--per-record records/{001}.xml`), cheaply on Dropbox.

Uploading each record with its own `files_upload` costs one namespace commit per record, and Dropbox
serialises commits per namespace (concurrent ones get `too_many_write_operations`), so a million
records crawl. Instead each record's bytes go up as a *closed* upload session (`upload_session/start`
with `close=true`; a bounded number in flight on a small thread pool), and the sessions are committed
1,000 at a time with `files_upload_session_finish_batch_v2`: one namespace commit per 1,000 records,
batches run one after another. The local folder does the same with plain files (temporary name +
rename each).

Names come from a template: `{001}` (a control field), `{035a}` (first subfield a of the first 035),
`{n}` (1-based record number), `{stem}` (the input file's stem). Values are sanitised as one path
segment, and a name over the byte limit is shortened with a stable hash suffix (destinations/paths.py);
a path that stays too long rejects that record. Each file is a complete document: the writer's header
+ the record + its footer. Names that repeat within a run (Dropbox compares case-insensitively) get
`~2`, `~3`... before the extension and are listed in `duplicates`; a record without the value a
template needs is rejected with `RecordError`.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any

from pipeline.destinations.base import Destination, DestinationError, OutputResult, StreamHasher
from pipeline.destinations.paths import sanitize_path, sanitize_segment
from pipeline.marc.record import Record, RecordError

log = logging.getLogger(__name__)

BATCH_LIMIT = 1000  # entries per finish_batch_v2, Dropbox's maximum
_PLACEHOLDER = re.compile(r"^(?:n|stem|\d{3}[a-z0-9]?)$")


class RecordNamer:
    """Expands a per-record path template for one record and keeps names unique within a run."""

    def __init__(self, template: str, stem: str = "") -> None:
        self.stem = stem
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"per-record template {template!r} is malformed: {exc}") from None
        self.template = template
        self._parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if name is not None and (spec or conversion or not _PLACEHOLDER.match(name)):
                raise ValueError(f"per-record template {template!r}: {{{name}}} is not a placeholder; use "
                                 "{001} (control field), {035a} (tag + subfield code), {n} (record number) or "
                                 "{stem} (input file name without extension)")
            self._parts.append((literal, name))
        if not any(name and name != "stem" for _, name in self._parts):
            raise ValueError(f"per-record template {template!r} has no placeholder, every record would get "
                             "the same name")
        self._seen: dict[str, int] = {}
        self.duplicates: list[tuple[str, str]] = []  # (name the template gave, name used)

    def name(self, record: Record, n: int) -> str:
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is None:
                continue
            value = str(n) if name == "n" else self.stem if name == "stem" else self._value(record, name)
            segment = sanitize_segment(value or "").replace("/", "_")
            if not segment:
                raise RecordError(f"record has no {name} for the per-record name {self.template!r}")
            out.append(segment)
        try:
            wanted = sanitize_path("".join(out))
        except ValueError as exc:  # too long even after each name was shortened
            raise RecordError(f"per-record name from {self.template!r}: {exc}") from None
        if not wanted:
            raise RecordError(f"per-record name from {self.template!r} is empty")
        return self._unique(wanted)

    @staticmethod
    def _value(record: Record, name: str) -> str | None:
        tag, code = name[:3], name[3:]
        if not code:
            value = record.control(tag)
            if value is not None:
                return value
            fields = record.get_fields(tag)
            return " ".join(v for _, v in fields[0].subfields or ()) if fields else None
        for f in record.get_fields(tag):
            value = f.get(code)
            if value:
                return value
        return None

    def _unique(self, wanted: str) -> str:
        key = wanted.casefold()
        if key not in self._seen:
            self._seen[key] = 1
            return wanted
        stem, dot, ext = wanted.rpartition(".")
        if not dot or "/" in ext:
            stem, dot, ext = wanted, "", ""
        count = self._seen[key]
        while True:
            count += 1
            candidate = f"{stem}~{count}{dot}{ext}"
            if candidate.casefold() not in self._seen:
                break
        self._seen[key] = count
        self._seen[candidate.casefold()] = 1
        self.duplicates.append((wanted, candidate))
        log.warning("per-record name %s repeats in this run; writing %s", wanted, candidate)
        return candidate


class PerRecordSink:
    """The engine's sink for one-file-per-record output: `begin()`, `record()`, `end()`, `abort()`.

    On Dropbox (`destination.upload_closed` exists) uploads run `max_in_flight` at a time and are
    committed every `batch_size` records; elsewhere each record is written with `write_bytes`.
    `end()` commits what is left, returns the results and raises `DestinationError` listing every
    record file that did not land (the others are delivered and reported in `self.results`).
    `first_number` is the `{n}` of the first record (a continuation passes its start record + 1).
    """

    wants_record = True  # the engine must send the Record: names come from its fields

    def __init__(self, destination: Destination, template: str, *, header: bytes = b"", footer: bytes = b"",
                 stem: str = "", first_number: int = 1, max_in_flight: int = 8, batch_size: int = BATCH_LIMIT,
                 deadline: float | None = None) -> None:
        if not 1 <= batch_size <= BATCH_LIMIT:
            raise ValueError(f"batch size must be 1..{BATCH_LIMIT}, got {batch_size}")
        self.destination = destination
        self.namer = RecordNamer(template, stem)
        self.header = header
        self.footer = footer
        self.batched = hasattr(destination, "upload_closed") and hasattr(destination, "commit_batch")
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.deadline = deadline
        self.results: list[OutputResult] = []
        self.failures: list[str] = []
        self.batches = 0
        self._count = first_number - 1
        self._first = first_number
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._ready: list[Any] = []  # BatchItem, uploaded and waiting for a batch commit
        self._inflight: set[Future[Any]] = set()
        self._fatal: BaseException | None = None

    @classmethod
    def factory(cls, template: str, *, first_number: int = 1, deadline: float | None = None,
                max_in_flight: int = 8) -> Callable[[Destination, str, Any, bool], PerRecordSink]:
        """A `SinkFactory` for `process_file(sink_factory=...)`: each file gets the encoder's header
        and footer, `{stem}` is the input's stem. `write_header` does not apply (every file is whole)."""
        RecordNamer(template)  # a bad template fails now, not at the first record

        def make(destination: Destination, stem: str, encoder: Any, write_header: bool) -> PerRecordSink:
            return cls(destination, template, header=encoder.header(), footer=encoder.footer(), stem=stem,
                       first_number=first_number, deadline=deadline, max_in_flight=max_in_flight)

        return make

    @property
    def duplicates(self) -> list[tuple[str, str]]:
        return self.namer.duplicates

    def begin(self) -> None:
        if self.batched:
            self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="per-record")

    def record(self, record: Record | None, data: bytes) -> None:
        if record is None:
            raise ValueError("PerRecordSink needs the record to name its file (wants_record = True)")
        relpath = self.namer.name(record, self._count + 1)
        self._count += 1
        if self.header or self.footer:
            data = b"".join((self.header, data, self.footer))
        if not self.batched:
            self.results.append(self.destination.write_bytes(relpath, data))
            return
        self._raise_fatal()
        self._slots.acquire()
        assert self._pool is not None, "begin() first"
        future = self._pool.submit(self._upload, relpath, data)
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._uploaded)
        if len(self._ready) >= self.batch_size:
            self._commit(self.batch_size)

    def end(self, complete: bool = True) -> list[OutputResult]:
        """Commit what is left; `complete` makes no difference (every file is already whole)."""
        if self.batched:
            self._drain()
            self._raise_fatal()
            while self._ready:
                self._commit(self.batch_size)
            self._close_pool()
        if self.failures:
            shown = "; ".join(self.failures[:5])
            more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
            total = self._count - self._first + 1
            raise DestinationError(f"{len(self.failures)} of {total} per-record files were not delivered: "
                                   f"{shown}{more}", retryable=True)
        return self.results

    def abort(self) -> None:
        """Stop: uploaded but uncommitted sessions are never committed (they expire on their own)."""
        if self._pool is not None:
            for f in list(self._inflight):
                f.cancel()
            self._drain()
            self._close_pool()
        self._ready = []

    # -- internals ------------------------------------------------------------------------------

    def _upload(self, relpath: str, data: bytes) -> Any:
        from pipeline.destinations.dropbox import BatchItem

        dest: Any = self.destination
        hasher = StreamHasher.of(data)
        session_id = dest.upload_closed(data, deadline=self.deadline)
        return BatchItem(relpath, dest.dropbox_path(relpath), session_id, hasher.size, hasher.sha256,
                         hasher.content_hash)

    def _uploaded(self, future: Future[Any]) -> None:
        self._slots.release()
        with self._lock:
            self._inflight.discard(future)
            if future.cancelled():
                return
            exc = future.exception()
            if exc is None:
                self._ready.append(future.result())
            elif self._fatal is None:
                self._fatal = exc

    def _drain(self) -> None:
        while True:
            with self._lock:
                pending = list(self._inflight)
            if not pending:
                return
            for f in pending:
                try:
                    f.exception()
                except CancelledError:  # errors themselves are kept by _uploaded
                    pass

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            exc, self._fatal = self._fatal, None
            self.abort()
            raise exc

    def _commit(self, limit: int) -> None:
        with self._lock:
            batch, self._ready = self._ready[:limit], self._ready[limit:]
        if not batch:
            return
        dest: Any = self.destination
        self.batches += 1
        for item, result in zip(batch, dest.commit_batch(batch, deadline=self.deadline), strict=True):
            if isinstance(result, OutputResult):
                self.results.append(result)
            else:
                self.failures.append(f"{item.relpath}: {result}")

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
