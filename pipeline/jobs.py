"""The job service: plan a job instance, run one file, settle it, write the manifest, recover stuck work.

This is the one job flow. The queue functions (pipeline/worker.py), `python -m pipeline replay` and
the demo call it; the ledger (pipeline/ledger.py) is the one record of what was done, and every
step is idempotent on the instance id and file name because deliveries are at least once:

- plan: the job spec (source, destination, format, rules, per-record template) and every file's
  output stem are fixed once, in the ledger; a redelivery re-sends only unsettled files.
- file: claimed under a lease; a done file is skipped; a file that cannot finish in the time
  budget checkpoints and continues in a new message; whoever settles the last file writes the
  manifest. A failed manifest write gives its claim back, and any later delivery or sweep that
  finds the job settled without a manifest completes it once the claim's lease has lapsed.
- poison: a file whose message failed every delivery is failed for good (with `_FAILED.json`),
  so the rest of the job still completes; a job that could not be planned is recorded as failed.
- sweep: instances whose leases expired with nothing in flight are continued (files re-sent),
  failed (after a bounded number of re-sends) or completed (manifest), so none stays `running`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline import notify, settings, submitter, telemetry
from pipeline.ledger import FileState, JobRecord, Ledger, LedgerError
from pipeline.marc.report import merge_reasons
from pipeline.messages import FileMessage

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FAILED = "_FAILED.json"
CONTROL_STEMS = ("manifest", "report", "_FAILED")  # stems no output may take: the job's own files
LEASE_GRACE = 60.0  # at most this many seconds a file lease outlives the invocation's budget
MANIFEST_LEASE = 600.0  # at most this many seconds a manifest writer holds its claim before another may take over
MAX_MEMBERS_LISTED = 100  # archive member names kept per file in the ledger and the manifest
SWEEP_MAX_RESENDS = 3  # re-sends of a file without progress before the sweeper fails it


class JobError(Exception):
    """This delivery failed and may succeed later: the queue should retry it (then poison it)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def under_functions_host() -> bool:
    """Running in Azure Functions (not the CLI, the demo or the tests): the app root is read-only."""
    return bool(os.environ.get("WEBSITE_SITE_NAME") or os.environ.get("FUNCTIONS_WORKER_RUNTIME"))


# ---- the job spec and the names reserved at planning ---------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything about where a job's files come from and go, fixed when the job is planned, so a
    settings change while the job runs cannot mix sources, folders or formats within one job."""

    source: str
    destination: str
    format: str = "marcxml"
    rules: str | None = None
    per_record: str | None = None

    @classmethod
    def from_settings(cls, *, job_name: str, job_id: str, instance_id: str, institution: str = "",
                      end_time: str = "", source: str | None = None) -> JobSpec:
        """The spec for a new job from the app settings; a destination that cannot work is a
        SettingError now rather than a failed write later."""
        from pipeline.destinations.paths import destination_url

        template = settings.get("DESTINATION")
        if under_functions_host() and (not template or _relative(template)):
            raise settings.SettingError("DESTINATION", f"must be dropbox:/... or an absolute folder under the "
                                        f"Functions host (the app folder is read-only), got {template!r}")
        if "{instance_id}" not in template:  # two instances never share a folder, so never a manifest
            template = template.rstrip("/") + "/{instance_id}"
        date = end_time[:10] if len(end_time) >= 10 else None
        destination = destination_url(template, job_name=job_name, job_id=job_id, instance_id=instance_id,
                                      institution=institution, date=date)
        return cls(source=source or settings.require("EXPORT_SOURCE"), destination=destination,
                   format=settings.get("OUTPUT_FORMAT"), rules=settings.get("TRANSFORM_RULES"),
                   per_record=settings.get("OUTPUT_PER_RECORD"))

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> JobSpec:
        """The spec a planned job recorded (records planned before the spec had a source use the setting)."""
        return cls(source=job.get("source") or settings.require("EXPORT_SOURCE"), destination=job["destination"],
                   format=job.get("format") or "marcxml", rules=job.get("rules"), per_record=job.get("per_record"))

    def to_job(self) -> dict[str, Any]:
        return asdict(self)


def _relative(template: str) -> bool:
    if template.startswith("dropbox:"):
        return False
    path = template[len("file://"):] if template.startswith("file://") else template
    return not os.path.isabs(path)


def reserve_stems(names: list[str]) -> dict[str, str]:
    """Each file's output stem, unique within the job and never a control file's: in plan order,
    with `-2`, `-3`... on a clash, as `python -m pipeline process` names them."""
    from pipeline.marc.detect import stem_of

    used = set(CONTROL_STEMS) | {f"{n}_FAILED" for n in names}
    stems: dict[str, str] = {}
    for name in names:
        base = stem_of(name)
        candidate, n = base, 1
        while candidate in used or f"{candidate}.rejects" in used:
            n += 1
            candidate = f"{base}-{n}"
        used.add(candidate)
        stems[name] = candidate
    return stems


def stems_taken_by_others(record: JobRecord, name: str) -> set[str]:
    """What one file's outputs must not be called: every other file's stem and the control files'."""
    taken = set(CONTROL_STEMS) | {f"{f.name}_FAILED" for f in record.files}
    for f in record.files:
        if f.name != name and f.info.get("stem"):
            taken.add(f.info["stem"])
    return taken


# ---- running one file: the engine by default ---------------------------------------------------------------


@dataclass
class FileWork:
    """What one invocation needs to process one file of a planned job."""

    name: str
    size: int | None
    spec: JobSpec
    source: Any
    destination: Any
    start_record: int  # resume after this many records (a continuation)
    resume_outputs: dict[str, Any]  # output stem -> the resumable output's checkpoint
    used_stems: set[str]  # output stems this file must not take (other files', control files')
    should_stop: Callable[[], bool]  # the time budget
    workers: int = 1


@dataclass
class FileOutcome:
    """What one invocation did: complete, or stopped at `records_done` with the outputs' checkpoints."""

    complete: bool
    records_done: int
    error: str | None
    summary: dict[str, Any]
    checkpoints: dict[str, Any]


def engine_runner(work: FileWork) -> FileOutcome:
    """The MARC engine over one file, with resumable outputs (or one file per record)."""
    from pipeline.marc.engine import Input, process_file
    from pipeline.marc.sinks import ResumableFileSink

    sinks: list[Any] = []
    spec = work.spec
    if spec.per_record:
        from pipeline.destinations.per_record import PerRecordSink

        per_record_factory = PerRecordSink.factory(spec.per_record, first_number=work.start_record + 1)

    def sink_factory(dest: Any, stem: str, encoder: Any, write_header: bool) -> Any:
        if spec.per_record:  # every record is a whole file: nothing to resume but the record count
            return per_record_factory(dest, stem, encoder, write_header)
        sink = ResumableFileSink.factory(dest, stem, encoder, write_header, resume=work.resume_outputs.get(stem))
        sinks.append(sink)
        return sink

    result = process_file(Input(work.name, lambda: work.source.open(work.name), work.size), work.destination,
                          fmt=spec.format, rules_path=spec.rules, start_record=work.start_record,
                          should_stop=work.should_stop, sink_factory=sink_factory, workers=work.workers,
                          used_stems=set(work.used_stems))
    checkpoints = {s.stem: s.checkpoint for s in sinks if s.checkpoint is not None}
    return FileOutcome(result.complete, result.records_done, result.error, file_summary(result), checkpoints)


# ---- the service -------------------------------------------------------------------------------------------


def alma_from_settings() -> Any:
    from pipeline.alma import AlmaClient

    return AlmaClient.from_settings()


def source_from_url(url: str | None) -> Any:
    from pipeline.sources import open_source

    return open_source(url)


def destination_from_url(url: str) -> Any:
    from pipeline.destinations import open_destination

    return open_destination(url)


@dataclass
class JobService:
    """The job flow over a ledger and factories for what it talks to (real ones from settings by default)."""

    ledger: Ledger
    alma_factory: Callable[[], Any] = alma_from_settings
    source_factory: Callable[[str | None], Any] = source_from_url
    destination_factory: Callable[[str], Any] = destination_from_url
    worker_id: str = "local"
    clock: Callable[[], float] = time.monotonic
    manifest_lease: float = MANIFEST_LEASE
    runner: Callable[[FileWork], FileOutcome] = engine_runner
    workers: int = 1  # engine worker processes per file (the queue worker uses one; replay may use more)
    fault: Callable[[str], None] = lambda point: None  # fault injection between steps (tests kill workers here)

    # ---- plan --------------------------------------------------------------------------------------

    def plan(self, message: Any, raw: dict[str, Any], *, last_attempt: bool = False, spec: JobSpec | None = None,
             strict: bool = False) -> list[FileMessage]:
        """Plan one job message (events.JobMessage); the file messages to send. JobError while Alma
        has not finished writing the files; a job that cannot be planned is failed and recorded.

        `spec` replaces the one from settings (replay's --out, --format...); `strict` raises
        NotThereYet, PlanError or SettingError instead of retrying or recording (for the CLI)."""
        from pipeline.plan import JobInstance, NotThereYet, PlanError
        from pipeline.plan import plan_export as make_plan

        iid = message.instance_id
        existing = self.ledger.get(iid)
        if existing is not None and existing.planned_at is not None:
            log.info("job instance %s already planned; re-sending its unsettled files", iid)
            self.complete_if_settled(iid)
            return [FileMessage(iid, f.name, existing.job.get("job_id", "")) for f in existing.files
                    if not f.settled()]
        with self.alma_factory() as alma:
            data = alma.get_job_instance(message.job_id, iid)
        instance = JobInstance.from_api(data, job_id=message.job_id)
        job = job_info(message, instance, data)
        try:
            spec = spec or JobSpec.from_settings(job_name=message.job_name, job_id=message.job_id, instance_id=iid,
                                                 institution=message.institution, end_time=job["end_time"])
        except (settings.SettingError, ValueError) as exc:
            if strict:
                raise
            self.fail_job(message, raw, job, str(exc), 1)
            return []
        job.update(spec.to_job())
        source = self.source_factory(spec.source)
        try:
            plan = make_plan(instance, source, last_attempt=last_attempt)
        except NotThereYet as exc:
            if strict:
                raise
            raise JobError(f"job instance {iid}: {exc}") from None
        except PlanError as exc:
            if strict:
                raise
            self.fail_job(message, raw, job, str(exc), 1)
            return []
        finally:
            source.close()
        names = [e.name for e in plan.files]
        stems = reserve_stems(names)
        files = [{"name": e.name, "size": e.size, "stem": stems[e.name]} for e in plan.files]
        try:
            record, created = self.ledger.create_plan(iid, job, files, message=raw)
        except ValueError as exc:  # too many files: a clear failure, recorded
            self.fail_job(message, raw, job, str(exc), 1)
            return []
        if existing is not None:  # a record before any plan is a recorded planning failure, requeued: now planned
            self.clear_failed(job["destination"], FAILED)
        log.info("job instance %s: %s %d file(s) from %s -> %s", iid, "planned" if created else "already planned",
                 len(record.files), plan.source, job["destination"])
        self.fault("planned")
        return [FileMessage(iid, f.name, message.job_id) for f in record.files if not f.settled()]

    def fail_job(self, message: Any, raw: dict[str, Any] | None, job: dict[str, Any], error: str,
                 attempts: int) -> JobRecord:
        """A job that cannot be planned: the ledger says failed (with the message, for requeue),
        then `_FAILED.json` where its outputs would have gone, and a notification."""
        self.ledger.mark_instance(message.instance_id, "failed", message=raw, error=error)
        record = self.ledger.update(message.instance_id, lambda r: setattr(r, "job", {**job, **r.job}))
        log.error("job %s instance %s FAILED: %s", message.job_name, message.instance_id, error)
        self.write_failed(record, None, error, attempts)
        notify.send(record)
        submitter.notify(self.ledger, record, alma_factory=self.alma_factory)
        return record

    # ---- one file ----------------------------------------------------------------------------------

    def run_file(self, msg: FileMessage, budget: float) -> list[FileMessage]:
        """Process one file message; returns a continuation when the budget ran out. JobError: retry."""
        from pipeline.destinations.base import DestinationError

        started = self.clock()
        ledger = self.ledger
        try:
            record, state = ledger.claim_file_in(msg.instance_id, msg.file, self.worker_id,
                                                 budget + min(LEASE_GRACE, budget))
        except LedgerError as exc:
            if ledger.get(msg.instance_id) is not None and "has no file" not in str(exc):
                raise
            log.error("job instance %s has no planned file %s; message dropped", msg.instance_id, msg.file)
            return []
        if state is None:
            return self._not_claimed(record, msg)
        self.fault("claimed")
        spec = JobSpec.from_job(record.job)
        checkpoint = state.checkpoint or {}
        try:
            source = self.source_factory(spec.source)
        except Exception as exc:  # a bad source setting or URL: retry (then poison) with the reason
            raise JobError(f"job instance {msg.instance_id} file {msg.file}: source {spec.source}: {exc}") from None
        work = FileWork(name=msg.file, size=state.info.get("size"), spec=spec, source=source,
                        destination=telemetry.traced(self.destination_factory(spec.destination)),
                        start_record=int(checkpoint.get("records_done", 0)),
                        resume_outputs=dict(checkpoint.get("outputs", {})),
                        used_stems=stems_taken_by_others(record, msg.file),
                        should_stop=lambda: self.clock() - started > budget, workers=self.workers)
        outcome: FileOutcome | None = None
        try:
            outcome = self.runner(work)
            error = outcome.error
        except (DestinationError, OSError) as exc:
            error = f"{msg.file}: {exc}"
        finally:
            source.close()
        self.fault("processed")
        if error:
            ledger.fail_file(msg.instance_id, msg.file, error, state.attempts, retryable=True,
                             worker_id=self.worker_id)
            if checkpoint:  # the failed run aborted its outputs: a retry starts the file afresh
                ledger.update(msg.instance_id, lambda r: setattr(r.file(msg.file), "checkpoint", None))
            raise JobError(f"job instance {msg.instance_id} file {msg.file}: {error}")

        assert outcome is not None
        telemetry.file_processed({**outcome.summary, "complete": outcome.complete}, self.clock() - started,
                                 msg.job_id, max((p.get("bytes_in") or 0 for p in checkpoint.get("results", [])),
                                                 default=0))
        if not outcome.complete:
            ledger.checkpoint_file(msg.instance_id, msg.file, {
                "records_done": outcome.records_done, "outputs": {**work.resume_outputs, **outcome.checkpoints},
                "results": checkpoint.get("results", []) + [outcome.summary],
            }, worker_id=self.worker_id)
            log.info("job instance %s file %s: budget of %.0f s used at record %d; continuing in a new message",
                     msg.instance_id, msg.file, budget, outcome.records_done)
            return [FileMessage(msg.instance_id, msg.file, msg.job_id, msg.part + 1)]

        summary = merge_parts(checkpoint.get("results", []) + [outcome.summary])
        summary["attempts"] = state.attempts
        summary["continuations"] = state.continuations
        last = ledger.finish_file(msg.instance_id, msg.file, summary, worker_id=self.worker_id,
                                  manifest_lease_seconds=self.manifest_lease)
        log.info("job instance %s file %s done: %d records out, %d rejected, %d dropped", msg.instance_id, msg.file,
                 summary["records_out"], summary["rejected"], summary["dropped"])
        if state.error:  # it failed before (a requeue, or a retry after poison): its _FAILED.json is stale now
            self.clear_failed(spec.destination, f"{msg.file}{FAILED}")
        self.fault("settled")
        if last:
            self.write_manifest(msg.instance_id)
        return []

    def _not_claimed(self, record: JobRecord, msg: FileMessage) -> list[FileMessage]:
        f = record.file(msg.file)
        if f.settled():
            log.info("job instance %s file %s is %s; nothing to do", msg.instance_id, msg.file, f.state)
            if record.settled() and record.manifest.state != "done":
                self.complete_if_settled(msg.instance_id)
            return []
        # Held by a live worker: retry later, so the file is not stranded if that worker dies.
        raise JobError(f"job instance {msg.instance_id} file {msg.file} is held by worker {f.worker} "
                       f"until {f.lease_until}; will look again")

    # ---- the manifest ------------------------------------------------------------------------------

    def complete_if_settled(self, instance_id: str) -> bool:
        """A settled job without its manifest (the writer died or its write failed): claim the
        manifest once the previous claim's lease has lapsed, and write it. False when not due."""
        record = self.ledger.get(instance_id)
        if record is None or not record.files or not record.settled() or record.manifest.state == "done":
            return False
        if not self.ledger.claim_manifest(instance_id, self.worker_id, self.manifest_lease):
            return False
        self.fault("manifest claimed")
        self.write_manifest(instance_id)
        return True

    def write_manifest(self, instance_id: str) -> JobRecord:
        """Write manifest.json under a claim this worker holds; on failure give the claim back (JobError)."""
        record = self.ledger.get(instance_id)
        assert record is not None
        try:
            destination = telemetry.traced(self.destination_factory(record.job["destination"]))
            body = json.dumps(manifest(record), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
            written = destination.write_bytes(MANIFEST, body)
        except Exception as exc:
            self.ledger.release_manifest(instance_id, self.worker_id, f"{type(exc).__name__}: {exc}")
            raise JobError(f"job instance {instance_id}: manifest not written ({exc}); a later delivery or the "
                           "sweeper writes it") from None
        self.fault("manifest written")
        record = self.ledger.manifest_written(instance_id, written.path)
        log.info("job instance %s %s: manifest at %s", instance_id, record.state, written.path)
        notify.send(record, location=getattr(destination, "url", None))
        submitter.notify(self.ledger, record, getattr(destination, "url", None), alma_factory=self.alma_factory)
        return record

    # ---- failures ----------------------------------------------------------------------------------

    def write_failed(self, record: JobRecord, file: FileState | None, error: str, attempts: int) -> None:
        """`_FAILED.json` next to where the outputs would have gone; never raises (best effort)."""
        dest_url = record.job.get("destination")
        if not dest_url:
            log.error("job instance %s has no destination to write %s to", record.instance_id, FAILED)
            return
        body = {"instance_id": record.instance_id, "job": record.job, "file": file.name if file else None,
                "error": error, "attempts": attempts, "failed_at": now_iso()}
        name = f"{file.name}{FAILED}" if file else FAILED
        try:
            self.destination_factory(dest_url).write_bytes(
                name, json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
        except Exception as exc:  # the failure record in the ledger is what counts; this is for people
            log.error("could not write %s for job instance %s: %s", name, record.instance_id, exc)

    def clear_failed(self, dest_url: str | None, name: str) -> None:
        """Remove a failure marker a successful re-run made stale; best effort, like writing it."""
        if not dest_url:
            return
        try:
            destination = self.destination_factory(dest_url)
            if destination.delete(name):
                log.info("removed stale %s at %s", name, destination.location(name))
        except Exception as exc:
            log.warning("could not remove stale %s: %s", name, exc)

    def file_poisoned(self, msg: FileMessage, dequeue_count: int) -> None:
        """A file message failed every delivery: the file fails for good unless it is done or held
        by a live worker; the job completes if that settled it."""
        record = self.ledger.get(msg.instance_id)
        if record is None or not record.has_file(msg.file):
            log.error("poison file message for unknown job instance %s file %s; nothing recorded",
                      msg.instance_id, msg.file)
            return
        f = record.file(msg.file)
        if f.state == "done":
            log.info("poison file message for job instance %s file %s, which is done; nothing to record",
                     msg.instance_id, msg.file)
            self.complete_if_settled(msg.instance_id)
            return
        error = f.error or "the message failed every delivery"
        attempts = max(f.attempts, dequeue_count)
        last = self.ledger.fail_file(msg.instance_id, msg.file, error, attempts, worker_id=self.worker_id,
                                     manifest_lease_seconds=self.manifest_lease)
        record = self.ledger.get(msg.instance_id) or record
        f = record.file(msg.file)
        if f.state == "failed":
            log.error("job %s instance %s file %s FAILED after %d attempts: %s", record.job.get("job_name"),
                      msg.instance_id, msg.file, attempts, error)
            self.write_failed(record, f, error, attempts)
        else:
            log.warning("poison file message for job instance %s file %s, which worker %s still holds; it decides",
                        msg.instance_id, msg.file, f.worker)
        if last:
            self.write_manifest(msg.instance_id)

    def job_poisoned(self, message: Any, raw: dict[str, Any], dequeue_count: int) -> None:
        """A job message failed every delivery: record the job as failed unless it was planned."""
        existing = self.ledger.get(message.instance_id)
        if existing is not None and existing.planned_at is not None:
            log.warning("poison job message for instance %s, which is planned; its files go on", message.instance_id)
            self.complete_if_settled(message.instance_id)
            return
        error = "planning failed on every delivery (Alma API or export source unreachable, or no files written yet)"
        try:
            job = job_info(message)
            job.update(JobSpec.from_settings(job_name=message.job_name, job_id=message.job_id,
                                             instance_id=message.instance_id, institution=message.institution,
                                             end_time=message.end_time or "").to_job())
        except (settings.SettingError, ValueError) as exc:
            job = {"job_id": message.job_id, "job_name": message.job_name, "destination": None,
                   "destination_error": str(exc)}
        self.fail_job(message, raw, job, error, dequeue_count)

    # ---- recovery ------------------------------------------------------------------------------------

    def sweep(self, stale_after: float, max_resends: int = SWEEP_MAX_RESENDS) -> list[FileMessage]:
        """Continue, fail or complete every instance nobody is working on; the file messages to send.
        One instance's problem (an unreadable record, a failing destination) does not stop the others."""
        messages: list[FileMessage] = []
        for record in self.ledger.list_instances():
            if record.planned_at is None or record.manifest.state == "done":
                continue
            iid = record.instance_id
            try:
                record, found = self.ledger.sweep(iid, self.worker_id, stale_after, max_resends,
                                                  self.manifest_lease)
                self.fault("swept")
                if found.resend or found.failed:
                    log.warning("sweep: job instance %s: re-sending %s; failing %s", iid, found.resend or "-",
                                found.failed or "-")
                for name in found.failed:
                    f = record.file(name)
                    self.write_failed(record, f, f.error or "", f.attempts)
                messages += [FileMessage(iid, name, record.job.get("job_id", "")) for name in found.resend]
                if found.complete:
                    self.write_manifest(iid)
            except Exception as exc:
                log.error("sweep: job instance %s: %s: %s", iid, type(exc).__name__, exc)
        return messages


# ---- what the ledger and the manifest say ------------------------------------------------------------------


def job_info(message: Any, instance: Any = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the ledger keeps of a job for reports and notifications (the spec is added at planning)."""
    end_time = (getattr(instance, "end_time", "") or message.end_time or "")
    submitted = (data or {}).get("submitted_by") or {}
    return {
        "job_id": message.job_id, "job_name": message.job_name, "instance_name": message.instance_name,
        "institution": message.institution, "status": getattr(instance, "status", "") or message.status,
        "end_time": end_time,
        "submitted_by": submitted.get("desc") or submitted.get("value") if isinstance(submitted, dict) else None,
        "submitted_by_id": submitted.get("value") if isinstance(submitted, dict) else None,  # Alma primary id
        "event_id": message.event_id,
    }


def file_summary(result: Any) -> dict[str, Any]:
    """A file's result as the ledger keeps it: counts, outputs, and at most MAX_MEMBERS_LISTED member names."""
    d = result.to_dict()
    out = {k: d[k] for k in ("records_in", "records_out", "rejected", "rejected_by_reason", "dropped", "bytes_in",
                             "seconds", "input_format", "members", "outputs")}
    members = out.get("members") or []
    if len(members) > MAX_MEMBERS_LISTED:
        out["members"] = members[:MAX_MEMBERS_LISTED]
        out["members_total"] = len(members)
    return out


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One file result from the results of its invocations (a continued file has several)."""
    total: dict[str, Any] = {"records_in": 0, "records_out": 0, "rejected": 0, "dropped": 0, "bytes_in": 0,
                             "seconds": 0.0, "outputs": [], "parts": len(parts)}
    for p in parts:
        for key in ("records_in", "records_out", "rejected", "dropped", "seconds"):
            total[key] += p.get(key) or 0
        total["bytes_in"] = max(total["bytes_in"], p.get("bytes_in") or 0)
        total["input_format"] = total.get("input_format") or p.get("input_format")
        total["members"] = p.get("members") or total.get("members", [])
        if p.get("members_total"):
            total["members_total"] = p["members_total"]
        total["outputs"].extend(p.get("outputs", []))
    total["rejected_by_reason"] = merge_reasons(p.get("rejected_by_reason") for p in parts)
    total["seconds"] = round(total["seconds"], 3)
    return total


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
        "job": {k: v for k, v in record.job.items() if k != "source" and (k != "rules" or v)},
        "state": "done" if all(f.state == "done" for f in record.files) else "failed",
        "planned_at": record.planned_at,
        "started_at": record.started_at,
        "finished_at": now_iso(),
        "totals": {**record.totals(), "rejected_by_reason": merge_reasons(
            (f.result or {}).get("rejected_by_reason") for f in record.files)},
        "files": files,
    }
