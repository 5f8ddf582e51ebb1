"""The job index: one small blob per job instance, named so that a plain listing is newest first.

The status page must stay cheap with thousands of instances, and reading every ledger blob to sort
them would not. So next to each ledger record `jobs/{id}.json` the ledger keeps an empty blob
`index/{inverted milliseconds}-{id}` whose metadata holds the instance's summary (state, times,
counts, rejects by reason, where the outputs are). Storage lists blob names in ascending order, so
the inverted time makes one List Blobs call (with metadata, `results_per_page`) return a whole page of
the newest instances, summaries included, whatever the number of instances.

Listing is a range read in Azure Storage, but still a request whose cost grows with the page. The
first page, the one people open, is cheaper still: `index-head.json` holds the summaries of the
newest HEAD_SIZE instances, kept current with ETag-conditional writes next to each entry write, so
the first page and its chart are one GET. Older pages list the entries.

The time is when the listener accepted the job's event (`received_at` of the stored queue message),
which never changes for an instance, so each instance has one stable entry that the ledger rewrites
(unconditionally, best effort) whenever the summary changes. A summary can lag behind the ledger (two
workers' index writes may land out of order); readers re-read the ledger record of any instance
that is not finished, and `reindex` rebuilds the whole index from the ledger.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.marc.report import merge_reasons

if TYPE_CHECKING:
    from pipeline.ledger import JobRecord

log = logging.getLogger(__name__)

PREFIX = "index/"
HEAD = "index-head.json"  # the newest instances' summaries in one blob (outside PREFIX)
HEAD_SIZE = 100
HEAD_ATTEMPTS = 20
METADATA_KEY = "summary"
_SPAN = 10**13  # milliseconds; inverted times stay 13 digits until the year 2286
MAX_REASONS = 8  # reject reasons kept per instance in the summary (the most frequent)
MAX_TEXT = 300  # characters kept of names, errors and reasons (metadata is at most 8 KiB)
VOLATILE = ("updated_at", "oldest_lease")  # change on every claim or checkpoint: not stored in the index


def _clip(value: Any, limit: int = MAX_TEXT) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def _millis(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def sort_time(record: JobRecord) -> str:
    """The stable time an instance is listed by: the event's `received_at`, else its plan time."""
    received = (record.message or {}).get("received_at")
    for value in (received, record.planned_at, record.updated_at):
        if isinstance(value, str) and _millis(value) is not None:
            return value
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def blob_name(instance_id: str, when: str) -> str:
    """`index/{inverted ms}-{id}`: ascending names are newest first."""
    millis = _millis(when) or 0
    return f"{PREFIX}{_SPAN - 1 - max(0, min(millis, _SPAN - 1)):013d}-{instance_id}"


def by_count(reasons: dict[str, int]) -> dict[str, int]:
    """Reject reasons, the most frequent first (what a person reads first)."""
    return dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def _error(record: JobRecord) -> str | None:
    if record.info.get("error"):
        return str(record.info["error"])
    for f in record.files:
        if f.state == "failed" and f.error:
            return f"{f.name}: {f.error}"
    return None


def summary(record: JobRecord) -> dict[str, Any]:
    """What the listing shows of one instance, small enough for blob metadata."""
    job = record.job or {}
    message = record.message or {}
    totals = record.totals()
    reasons = by_count(merge_reasons((f.result or {}).get("rejected_by_reason") for f in record.files))
    running = [f.lease_until for f in record.files if f.state == "running" and f.lease_until]
    return {
        "instance_id": record.instance_id,
        "job_id": job.get("job_id") or message.get("job_id") or "",
        "job_name": _clip(job.get("job_name") or message.get("job_name") or ""),
        "instance_name": _clip(job.get("instance_name") or message.get("instance_name") or ""),
        "state": record.state,
        "listed_at": sort_time(record),
        "planned_at": record.planned_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "updated_at": record.updated_at,
        "records_in": totals.get("records_in", 0),
        "records_out": totals.get("records_out", 0),
        "rejected": totals.get("rejected", 0),
        "dropped": totals.get("dropped", 0),
        "bytes_in": totals.get("bytes_in", 0),
        "files": len(record.files),
        "files_done": sum(1 for f in record.files if f.state == "done"),
        "files_failed": sum(1 for f in record.files if f.state == "failed"),
        "reasons": {_clip(k, 200): v for k, v in list(reasons.items())[:MAX_REASONS]},
        "destination": _clip(job.get("destination") or "", 500),
        "manifest": _clip(record.manifest.location or "", 500) or None,
        "error": _clip(_error(record), 500),
        "oldest_lease": min(running) if running else None,
    }


def encode(data: dict[str, Any]) -> dict[str, str]:
    """Blob metadata must be ASCII header text: the summary travels as base64 JSON."""
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return {METADATA_KEY: base64.b64encode(raw).decode("ascii")}


def decode(metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """The summary stored in an index blob's metadata, or None when it is missing or unreadable."""
    value = (metadata or {}).get(METADATA_KEY)
    if not value:
        return None
    try:
        data = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("instance_id"), str) else None


def stored(record: JobRecord) -> dict[str, Any]:
    """The summary as the index keeps it: without what changes on every claim and checkpoint
    (readers re-read unfinished instances from the ledger anyway), so a continuation or a lease
    renewal costs no index write."""
    data = summary(record)
    for key in VOLATILE:
        data.pop(key)
    return data


def write(container: Any, record: JobRecord, previous: dict[str, Any] | None) -> None:
    """Rewrite the instance's index entry when its stored summary changed; never fails the ledger
    write. `previous` is `stored()` before the change (None for a new record); when the listing
    time changed (a new message replaced one that was never planned), the old entry is removed.
    """
    current = stored(record)
    if previous == current:
        return
    name = blob_name(record.instance_id, current["listed_at"])
    try:
        container.upload_blob(name, b"", overwrite=True, metadata=encode(current))
        if previous is not None and previous.get("listed_at") != current["listed_at"]:
            old = blob_name(record.instance_id, previous["listed_at"])
            if old != name:
                container.delete_blob(old)
        _update_head(container, {**current, "updated_at": record.updated_at})
    except Exception as exc:  # the ledger is the record; the index is a view that reindex rebuilds
        log.warning("job index entry for instance %s not written: %s", record.instance_id, exc)


def _order(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first, as the entries' names order them."""
    return sorted(entries, key=lambda e: blob_name(e["instance_id"], e.get("listed_at")))


def read_head(container: Any) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The head's entries (newest first) and its ETag; (None, None) when there is no head."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        download = container.get_blob_client(HEAD).download_blob()
        raw = download.readall()
    except ResourceNotFoundError:
        return None, None
    try:
        data = json.loads(raw)
        entries = [e for e in data["entries"] if isinstance(e, dict) and isinstance(e.get("instance_id"), str)]
    except (ValueError, TypeError, KeyError):
        log.error("%s is unreadable; python -m pipeline status --reindex rebuilds it", HEAD)
        return None, download.properties.etag
    return entries, download.properties.etag


def _write_head(container: Any, entries: list[dict[str, Any]], etag: str | None) -> None:
    from azure.core import MatchConditions
    from azure.storage.blob import ContentSettings

    body = json.dumps({"v": 1, "entries": entries}, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    condition = ({"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag
                 else {"match_condition": MatchConditions.IfMissing})
    container.upload_blob(HEAD, body, overwrite=True, content_settings=ContentSettings("application/json"),
                          **condition)


def _update_head(container: Any, entry: dict[str, Any]) -> None:
    """Put one instance's summary into the head (read-modify-write, retried on a concurrent write);
    a summary older than the one there (an out-of-order write) or older than the whole head is left out."""
    from azure.core.exceptions import HttpResponseError

    for attempt in range(HEAD_ATTEMPTS):
        entries, etag = read_head(container)
        entries = entries or []
        there = next((e for e in entries if e["instance_id"] == entry["instance_id"]), None)
        if there is not None and (there.get("updated_at") or "") > (entry.get("updated_at") or ""):
            return
        if there == entry:
            return
        kept = _order([e for e in entries if e is not there] + [entry])[:HEAD_SIZE]
        if there is None and entry not in kept:
            return
        try:
            _write_head(container, kept, etag)
            return
        except HttpResponseError as exc:
            if exc.status_code not in (409, 412):
                raise
            time.sleep(random.uniform(0, min(0.5, 0.004 * 2**attempt)))
    log.warning("%s: gave up after %d conflicting writes; instance %s may be missing from the first page "
                "until its next change", HEAD, HEAD_ATTEMPTS, entry["instance_id"])


@dataclass
class Page:
    """One page of index entries, newest first, the token of the next (older) page, and every
    entry the listing call returned (a first page also serves the chart from them)."""

    summaries: list[dict[str, Any]]
    next_token: str | None
    seen: list[dict[str, Any]]


def _token(marker: str | None, skip: int) -> str:
    raw = json.dumps([marker, skip], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _untoken(token: str) -> tuple[str | None, int]:
    try:
        marker, skip = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if (marker is None or isinstance(marker, str)) and isinstance(skip, int) and 0 <= skip <= 5000:
            return marker, skip
    except (ValueError, TypeError):
        pass
    raise ValueError("the page token is not one this app made")


def read_page(container: Any, size: int, token: str | None = None, *, at_least: int = 0) -> Page:
    """The first page from the head (one GET), or `size` entries from `token` on with one List Blobs
    call, reading `at_least` entries when that is more (a first page's chart, when there is no head).
    A token is the storage continuation marker plus how many entries after it were already shown."""
    from azure.core.exceptions import ResourceNotFoundError

    if not token:
        entries, _ = read_head(container)
        if entries is not None:
            more = len(entries) > size or len(entries) == HEAD_SIZE
            return Page(entries[:size], _token(None, size) if more else None, entries)
    marker, skip = _untoken(token) if token else (None, 0)
    want = max(skip + size, at_least)
    pages = container.list_blobs(name_starts_with=PREFIX, include=["metadata"],
                                 results_per_page=want).by_page(continuation_token=marker)
    try:
        items = list(next(pages))
    except StopIteration:
        items = []
    except ResourceNotFoundError:  # no container yet: nothing has ever been recorded
        return Page([], None, [])
    seen = []
    for blob in items:
        data = decode(blob.metadata)
        if data is None:
            log.error("skipping index entry %s: no readable summary (python -m pipeline status --reindex)", blob.name)
            data = {}
        seen.append(data)
    if len(items) > skip + size:  # read ahead (for the chart): the next page starts inside this listing
        next_token = _token(marker, skip + size)
    elif pages.continuation_token:  # storage may return fewer than asked: skip what is still to skip
        next_token = _token(pages.continuation_token, max(0, skip - len(items)))
    else:
        next_token = None
    page = [d for d in seen[skip: skip + size] if d]
    return Page(page, next_token, [d for d in seen if d])


def page_of(records: Iterable[JobRecord], size: int, token: str | None = None, *, at_least: int = 0) -> Page:
    """A page of records held in memory (an in-memory ledger), in the index's order."""
    entries = _order([{**stored(r), "updated_at": r.updated_at} for r in records])
    skip = int(token) if token and token.isdigit() else 0
    more = skip + size < len(entries)
    return Page(entries[skip: skip + size], str(skip + size) if more else None,
                entries[skip: skip + max(size, at_least)])


def rebuild(container: Any, records: Iterable[JobRecord]) -> tuple[int, int]:
    """Write every record's entry and delete entries of instances no longer in the ledger
    (or listed under another time). Returns (written, removed). Reads everything: run it once
    after upgrading from a version without the index, or after deleting ledger blobs by hand."""
    wanted = {}
    for record in records:
        wanted[blob_name(record.instance_id, sort_time(record))] = record
    removed = 0
    for blob in container.list_blobs(name_starts_with=PREFIX):
        if blob.name not in wanted:
            container.delete_blob(blob.name)
            removed += 1
    for name, record in wanted.items():
        container.upload_blob(name, b"", overwrite=True, metadata=encode(stored(record)))
    write_head(container, wanted.values())
    return len(wanted), removed


def write_head(container: Any, records: Iterable[JobRecord]) -> None:
    """Replace the head with the newest HEAD_SIZE of `records` (all of them must be given)."""
    head = _order([{**stored(r), "updated_at": r.updated_at} for r in records])[:HEAD_SIZE]
    _, etag = read_head(container)
    _write_head(container, head, etag)
