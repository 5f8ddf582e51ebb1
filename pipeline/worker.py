"""The queue workers' logic: plan a job instance, process one export file, record failures.

`function_app.py` calls these three functions from its queue triggers; the dev host, the demo and
the tests call the same registered functions. Deliveries are at least once (Alma retries webhooks,
the queue redelivers after a crash or a timeout), so every step is idempotent on the job instance
id and the file name, with the ledger (pipeline/ledger.py) as the one record of what was done:

- plan: a planned instance is never planned again; a redelivery only re-sends the files that are
  not settled (a file message for a file already done or held by a live worker is harmless).
- file: claimed in the ledger before work starts; a done file is skipped; a file that cannot finish
  in the invocation's time budget checkpoints (records done + the resumable output state) and
  continues in a new message; the one worker whose write settles the last file writes
  manifest.json and notifies.
- poison: a message that failed `maxDequeueCount` times is recorded as failed, with `_FAILED.json`
  next to where the outputs would have gone, so the rest of the job still completes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline import events, notify, settings, submitter
from pipeline.destinations import open_destination
from pipeline.destinations.base import Destination, DestinationError
from pipeline.ledger import FileState, JobRecord, Ledger
from pipeline.marc.report import merge_reasons
from pipeline.queues import FILES_QUEUE

log = logging.getLogger(__name__)

FILE_MESSAGE_VERSION = 1
MANIFEST = "manifest.json"
FAILED = "_FAILED.json"
LEASE_GRACE = 60.0  # at most this many seconds a file lease outlives the invocation's budget


class WorkerError(Exception):
    """This delivery failed; raising it makes the host retry the message later (then poison)."""


# ---- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileMessage:
    """One message on `alma-export-files`: which file of which planned instance to process.

    Everything else (job, destination, checkpoint) is in the ledger, so the message stays tiny and a
    continuation is the same message again.
    """

    instance_id: str
    file: str
    job_id: str = ""
    part: int = 0  # 0 for the first delivery, n for the n-th continuation

    def to_json(self) -> str:
        return json.dumps({"v": FILE_MESSAGE_VERSION, "instance_id": self.instance_id, "file": self.file,
                           "job_id": self.job_id, "part": self.part}, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | bytes) -> FileMessage:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise WorkerError(f"file message is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != FILE_MESSAGE_VERSION:
            raise WorkerError(f"file message has no supported version (v={FILE_MESSAGE_VERSION}): {str(raw)[:200]}")
        iid, name = data.get("instance_id"), data.get("file")
        if not isinstance(iid, str) or not iid or not isinstance(name, str) or not name:
            raise WorkerError("file message needs non-empty 'instance_id' and 'file'")
        part = data.get("part", 0)
        return cls(iid, name, str(data.get("job_id") or ""), part if isinstance(part, int) else 0)


# ---- dependencies -------------------------------------------------------------------------------


def _alma_from_settings() -> Any:
    from pipeline.alma import AlmaClient

    return AlmaClient.from_settings()


def _source_from_settings() -> Any:
    from pipeline.sources import open_source

    return open_source()


@dataclass
class Context:
    """What the workers talk to; built from settings in Azure, injected by the demo and the tests."""

    ledger_factory: Callable[[], Ledger] = Ledger.from_settings
    alma_factory: Callable[[], Any] = _alma_from_settings
    source_factory: Callable[[], Any] = _source_from_settings
    destination_factory: Callable[[str], Destination] = open_destination
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = self.ledger_factory()
        return self._ledger


_context: Context | None = None


def context() -> Context:
    """The process-wide Context the Azure functions use (built from settings on first use)."""
    global _context
    if _context is None:
        _context = Context()
    return _context


def set_context(ctx: Context | None) -> None:
    """Replace the process-wide Context: for local drivers (demo, tests) that inject fakes."""
    global _context
    _context = ctx


def time_budget() -> float:
    """Seconds one invocation may work on a file: WORKER_TIME_BUDGET, else 80% of host.json's
    functionTimeout less a minute for the checkpoint, the ledger and the continuation message."""
    configured = settings.get("WORKER_TIME_BUDGET")
    if configured is not None:
        return float(configured)
    from pipeline.hostconfig import current

    timeout = current().function_timeout
    return max(30.0, timeout * 0.8 - 60.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- plan_export ----------------------------------------------------------------------------------


def plan_export(body: str | bytes, *, dequeue_count: int = 1, max_dequeue: int = 5,
                ctx: Context | None = None) -> list[str]:
    """Plan one JOB_END message; returns the file messages to put on `alma-export-files`.

    Raises WorkerError (the host retries later) while Alma has not finished writing the files.
    """
    from pipeline.plan import JobInstance, NotThereYet, PlanError
    from pipeline.plan import plan_export as make_plan

    ctx = ctx or context()
    try:
        message = events.parse_queue_message(body)
    except events.QueueMessageError as exc:
        raise WorkerError(f"job message rejected: {exc}") from None
    iid = message.instance_id
    ledger = ctx.ledger
    existing = ledger.get(iid)
    if existing is not None and existing.planned_at is not None:
        log.info("job instance %s already planned; re-sending its unsettled files", iid)
        _finish_if_settled(existing, ctx)
        return [FileMessage(iid, f.name, existing.job.get("job_id", "")).to_json()
                for f in existing.files if f.state in ("pending", "failed") and not f.settled()]

    with ctx.alma_factory() as alma:
        data = alma.get_job_instance(message.job_id, iid)
    instance = JobInstance.from_api(data, job_id=message.job_id)
    job = job_info(message, instance, data)
    source = ctx.source_factory()
    try:
        plan = make_plan(instance, source, last_attempt=dequeue_count >= max_dequeue)
    except NotThereYet as exc:
        raise WorkerError(f"job instance {iid}: {exc}") from None
    except PlanError as exc:
        _fail_instance(ctx, message, body, job, str(exc), dequeue_count)
        return []
    finally:
        source.close()

    files = [{"name": e.name, "size": e.size} for e in plan.files]
    record, created = ledger.create_plan(iid, job, files, message=json.loads(body))
    if existing is not None:  # a record before any plan is a recorded planning failure, requeued: now planned
        _clear_failed(ctx, job["destination"], FAILED)
    log.info("job instance %s: %s %d file(s) from %s -> %s", iid, "planned" if created else "already planned",
             len(record.files), plan.source, job["destination"])
    return [FileMessage(iid, f.name, message.job_id).to_json() for f in record.files if not f.settled()]


def job_info(message: events.JobMessage, instance: Any = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the ledger keeps of a job: names for reports, and the per-job output settings, fixed at
    planning time so every file of one instance lands in one folder with one format."""
    from pipeline.destinations.paths import destination_url

    end_time = (getattr(instance, "end_time", "") or message.end_time or "")
    submitted = (data or {}).get("submitted_by") or {}
    destination = destination_url(settings.get("DESTINATION"), job_name=message.job_name, job_id=message.job_id,
                                  instance_id=message.instance_id, institution=message.institution,
                                  date=end_time[:10] if len(end_time) >= 10 else None)
    return {
        "job_id": message.job_id, "job_name": message.job_name, "instance_name": message.instance_name,
        "institution": message.institution, "status": getattr(instance, "status", "") or message.status,
        "end_time": end_time,
        "submitted_by": submitted.get("desc") or submitted.get("value") if isinstance(submitted, dict) else None,
        "submitted_by_id": submitted.get("value") if isinstance(submitted, dict) else None,  # Alma primary id
        "event_id": message.event_id, "destination": destination,
        "format": settings.get("OUTPUT_FORMAT"), "rules": settings.get("TRANSFORM_RULES"),
        "per_record": settings.get("OUTPUT_PER_RECORD"),
    }


def _fail_instance(ctx: Context, message: events.JobMessage, body: str | bytes, job: dict[str, Any],
                   error: str, attempts: int) -> None:
    """A job that cannot be planned: ledger says failed (with the message, for requeue), then
    `_FAILED.json` and a notification."""

    def fail(record: JobRecord) -> None:
        record.job = {**job, **record.job}

    ctx.ledger.mark_instance(message.instance_id, "failed", message=json.loads(body), error=error)
    record = ctx.ledger.update(message.instance_id, fail)
    log.error("job %s instance %s FAILED: %s", message.job_name, message.instance_id, error)
    _write_failed(ctx, record, None, error, attempts)
    notify.send(record)
    submitter.notify(ctx.ledger, record, alma_factory=ctx.alma_factory)


# ---- process_export_file ------------------------------------------------------------------------------


def process_export_file(body: str | bytes, *, dequeue_count: int = 1, ctx: Context | None = None,
                        budget: float | None = None) -> list[str]:
    """Process one export file message; returns a continuation message when the budget ran out."""
    from pipeline.marc.engine import Input, process_file
    from pipeline.marc.sinks import ResumableFileSink

    ctx = ctx or context()
    started = ctx.clock()
    msg = FileMessage.parse(body)
    budget = time_budget() if budget is None else budget
    ledger = ctx.ledger
    state = ledger.claim_file(msg.instance_id, msg.file, ctx.worker_id, budget + min(LEASE_GRACE, budget))
    if state is None:
        return _not_claimed(ledger, msg)
    record = ledger.get(msg.instance_id)
    assert record is not None
    job = record.job
    checkpoint = state.checkpoint or {}
    start_record = int(checkpoint.get("records_done", 0))
    resume_outputs: dict[str, Any] = dict(checkpoint.get("outputs", {}))
    sinks: list[Any] = []

    destination = ctx.destination_factory(job["destination"])
    per_record = job.get("per_record")
    if per_record:
        from pipeline.destinations.per_record import PerRecordSink

        per_record_factory = PerRecordSink.factory(per_record, first_number=start_record + 1)

    def sink_factory(dest: Destination, stem: str, encoder: Any, write_header: bool) -> Any:
        if per_record:  # every record is a whole file: nothing to resume but the record count
            return per_record_factory(dest, stem, encoder, write_header)
        sink = ResumableFileSink.factory(dest, stem, encoder, write_header, resume=resume_outputs.get(stem))
        sinks.append(sink)
        return sink

    source = ctx.source_factory()
    try:
        result = process_file(
            Input(msg.file, lambda: source.open(msg.file), state.info.get("size")),
            destination,
            fmt=job.get("format") or "marcxml",
            rules_path=job.get("rules"),
            start_record=start_record,
            should_stop=lambda: ctx.clock() - started > budget,
            sink_factory=sink_factory,
            workers=1,
        )
    except (DestinationError, OSError) as exc:
        result = None
        error = f"{msg.file}: {exc}"
    finally:
        source.close()
    if result is not None:
        error = result.error
    if error:
        ledger.fail_file(msg.instance_id, msg.file, error, state.attempts, retryable=True, worker_id=ctx.worker_id)
        if checkpoint:  # the failed run aborted its outputs: a retry starts the file afresh
            ledger.update(msg.instance_id, lambda r: setattr(r.file(msg.file), "checkpoint", None))
        raise WorkerError(f"job instance {msg.instance_id} file {msg.file}: {error}")

    assert result is not None
    if not result.complete:
        # An output this invocation did not reach keeps its earlier state.
        outputs = {**resume_outputs, **{s.stem: s.checkpoint for s in sinks if s.checkpoint is not None}}
        previous = checkpoint.get("results", [])
        ledger.checkpoint_file(msg.instance_id, msg.file, {
            "records_done": result.records_done, "outputs": outputs,
            "results": previous + [_file_summary(result)],
        }, worker_id=ctx.worker_id)
        log.info("job instance %s file %s: budget of %.0f s used at record %d; continuing in a new message",
                 msg.instance_id, msg.file, budget, result.records_done)
        return [FileMessage(msg.instance_id, msg.file, msg.job_id, msg.part + 1).to_json()]

    summary = _merge_parts(checkpoint.get("results", []) + [_file_summary(result)])
    summary["attempts"] = state.attempts
    summary["continuations"] = state.continuations
    last = ledger.finish_file(msg.instance_id, msg.file, summary, worker_id=ctx.worker_id)
    log.info("job instance %s file %s done: %d records out, %d rejected, %d dropped", msg.instance_id, msg.file,
             summary["records_out"], summary["rejected"], summary["dropped"])
    if state.error:  # it failed before (a requeue, or a retry after poison): its _FAILED.json is stale now
        _clear_failed(ctx, job["destination"], f"{msg.file}{FAILED}")
    if last:
        _write_manifest(ctx, msg.instance_id)
    return []


def _not_claimed(ledger: Ledger, msg: FileMessage) -> list[str]:
    record = ledger.get(msg.instance_id)
    f = record.file(msg.file) if record else None
    if f is None or f.settled():
        log.info("job instance %s file %s is %s; nothing to do", msg.instance_id, msg.file,
                 f.state if f else "not planned")
        return []
    # Held by a live worker: retry later, so the file is not stranded if that worker dies.
    raise WorkerError(f"job instance {msg.instance_id} file {msg.file} is held by worker {f.worker} "
                      f"until {f.lease_until}; will look again")


def _file_summary(result: Any) -> dict[str, Any]:
    d = result.to_dict()
    return {k: d[k] for k in ("records_in", "records_out", "rejected", "rejected_by_reason", "dropped", "bytes_in",
                              "seconds", "input_format", "members", "outputs")}


def _merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One file result from the results of its invocations (a continued file has several)."""
    total: dict[str, Any] = {"records_in": 0, "records_out": 0, "rejected": 0, "dropped": 0, "bytes_in": 0,
                             "seconds": 0.0, "outputs": [], "parts": len(parts)}
    for p in parts:
        for key in ("records_in", "records_out", "rejected", "dropped", "seconds"):
            total[key] += p.get(key) or 0
        total["bytes_in"] = max(total["bytes_in"], p.get("bytes_in") or 0)
        total["input_format"] = total.get("input_format") or p.get("input_format")
        total["members"] = p.get("members") or total.get("members", [])
        total["outputs"].extend(p.get("outputs", []))
    total["rejected_by_reason"] = merge_reasons(p.get("rejected_by_reason") for p in parts)
    total["seconds"] = round(total["seconds"], 3)
    return total


# ---- manifest, failures -----------------------------------------------------------------------------


def _finish_if_settled(record: JobRecord, ctx: Context) -> None:
    """A redelivered job whose files are all settled but whose manifest writer died: finish it."""
    if record.settled() and record.manifest.state != "done" and record.files:
        if ctx.ledger.claim_manifest(record.instance_id, ctx.worker_id):
            _write_manifest(ctx, record.instance_id)


def manifest(record: JobRecord) -> dict[str, Any]:
    """What manifest.json says: the job, every file with its counts, outputs and hashes, totals."""
    files = []
    for f in record.files:
        entry: dict[str, Any] = {"name": f.name, "state": f.state, "attempts": f.attempts,
                                 "started_at": f.started_at, "finished_at": f.finished_at}
        if f.result:
            entry.update(f.result)
        if f.error:
            entry["error"] = f.error
        files.append(entry)
    return {
        "manifest_version": 1,
        "instance_id": record.instance_id,
        "job": {k: v for k, v in record.job.items() if k != "rules" or v},
        "state": "done" if all(f.state == "done" for f in record.files) else "failed",
        "planned_at": record.planned_at,
        "started_at": record.started_at,
        "finished_at": _now(),
        "totals": {**record.totals(), "rejected_by_reason": merge_reasons(
            (f.result or {}).get("rejected_by_reason") for f in record.files)},
        "files": files,
    }


def _write_manifest(ctx: Context, instance_id: str) -> None:
    ledger = ctx.ledger
    record = ledger.get(instance_id)
    assert record is not None
    destination = ctx.destination_factory(record.job["destination"])
    body = json.dumps(manifest(record), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    written = destination.write_bytes(MANIFEST, body)
    record = ledger.manifest_written(instance_id, written.path)
    log.info("job instance %s %s: manifest at %s", instance_id, record.state, written.path)
    notify.send(record, location=destination.url)
    submitter.notify(ctx.ledger, record, destination.url, alma_factory=ctx.alma_factory)


def _write_failed(ctx: Context, record: JobRecord, file: FileState | None, error: str, attempts: int) -> None:
    """`_FAILED.json` next to where the outputs would have gone; never raises (best effort)."""
    dest_url = record.job.get("destination")
    if not dest_url:
        log.error("job instance %s has no destination to write %s to", record.instance_id, FAILED)
        return
    body = {"instance_id": record.instance_id, "job": record.job, "file": file.name if file else None,
            "error": error, "attempts": attempts, "failed_at": _now()}
    name = f"{file.name}{FAILED}" if file else FAILED
    try:
        ctx.destination_factory(dest_url).write_bytes(
            name, json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
    except Exception as exc:  # the failure record in the ledger is what counts; this is for people
        log.error("could not write %s for job instance %s: %s", name, record.instance_id, exc)


def _clear_failed(ctx: Context, dest_url: str | None, name: str) -> None:
    """Remove a failure marker a successful re-run made stale; best effort, like writing it."""
    if not dest_url:
        return
    try:
        destination = ctx.destination_factory(dest_url)
        remove = getattr(destination, "delete", None)
        if remove is not None and remove(name):
            log.info("removed stale %s at %s", name, destination.location(name))
    except Exception as exc:
        log.warning("could not remove stale %s: %s", name, exc)


def export_failed(body: str | bytes, queue: str, *, dequeue_count: int = 0, ctx: Context | None = None) -> None:
    """A message reached `<queue>-poison`: record why in the ledger and in `_FAILED.json`."""
    ctx = ctx or context()
    ledger = ctx.ledger
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if queue.startswith(FILES_QUEUE):
        try:
            msg = FileMessage.parse(text)
        except WorkerError as exc:
            log.error("poison file message could not be read (%s): %s", exc, text[:500])
            return
        record = ledger.get(msg.instance_id)
        if record is None:
            log.error("poison file message for unknown job instance %s file %s", msg.instance_id, msg.file)
            return
        f = record.file(msg.file)
        error = f.error or "the message failed every delivery"
        attempts = max(f.attempts, dequeue_count)
        last = ledger.fail_file(msg.instance_id, msg.file, error, attempts, worker_id=ctx.worker_id)
        record = ledger.get(msg.instance_id) or record
        log.error("job %s instance %s file %s FAILED after %d attempts: %s", record.job.get("job_name"),
                  msg.instance_id, msg.file, attempts, error)
        if record.file(msg.file).state == "failed":
            _write_failed(ctx, record, record.file(msg.file), error, attempts)
        if last:
            _write_manifest(ctx, msg.instance_id)
        return
    try:
        message = events.parse_queue_message(text)
    except events.QueueMessageError as exc:
        log.error("poison job message could not be read (%s): %s", exc, text[:500])
        return
    existing = ledger.get(message.instance_id)
    if existing is not None and existing.planned_at is not None:
        log.warning("poison job message for instance %s, which is planned; its files go on", message.instance_id)
        return
    error = "planning failed on every delivery (Alma API or export source unreachable, or no files written yet)"
    try:
        job = job_info(message)
    except (settings.SettingError, ValueError) as exc:
        job = {"job_id": message.job_id, "job_name": message.job_name, "destination": None,
               "destination_error": str(exc)}
    _fail_instance(ctx, message, text, job, error, dequeue_count)
