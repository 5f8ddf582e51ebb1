"""Ledgers with job instances in every state, for the status page's tests and bench/status.py.

`record_run` goes through the Ledger's own operations (plan, claim, finish or fail, manifest), so
the index entries are the ones the workers would write. `generated_record` builds the same kind of
finished record in memory, for filling a ledger with thousands of instances quickly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline import jobindex
from pipeline.ledger import FileState, JobRecord, Ledger, ManifestState

JOB_ID = "S5139276810004146"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(instance_id: str, received: datetime, job_name: str) -> dict[str, Any]:
    return {"v": 1, "event_id": "e" + instance_id, "action": "JOB_END", "institution": "01XYZ_INST",
            "job_id": JOB_ID, "instance_id": instance_id, "job_name": job_name,
            "instance_name": f"{job_name} - Nightly discovery export", "status": "COMPLETED_SUCCESS",
            "end_time": iso(received), "received_at": iso(received), "counters": {}}


def job(instance_id: str, job_name: str, received: datetime) -> dict[str, Any]:
    return {"job_id": JOB_ID, "job_name": job_name, "instance_name": f"{job_name} - Nightly discovery export",
            "institution": "01XYZ_INST", "status": "COMPLETED_SUCCESS", "end_time": iso(received),
            "submitted_by": "System", "event_id": "e" + instance_id,
            "destination": f"dropbox:/Alma exports/{job_name}/{iso(received)[:10]}", "format": "marcxml",
            "rules": None, "per_record": None}


def result(name: str, records: int, rejects: dict[str, int] | None = None) -> dict[str, Any]:
    rejected = sum((rejects or {}).values())
    out = records - rejected
    return {"records_in": records, "records_out": out, "rejected": rejected, "dropped": 0, "bytes_in": records * 1500,
            "seconds": 1.5, "input_format": "marcxml", "members": [name], "rejected_by_reason": dict(rejects or {}),
            "outputs": [{"path": f"/Alma exports/{name}.out.xml", "kind": "records", "size": out * 1700,
                         "sha256": "ab" * 32, "content_hash": "cd" * 32}], "parts": 1, "attempts": 1,
            "continuations": 0}


def record_run(ledger: Ledger, instance_id: str, received: datetime, *, job_name: str = "Export Bibliographic Records",
               files: list[tuple[str, int, dict[str, int] | None]] | None = None, fail: str | None = None,
               finish: bool = True) -> JobRecord:
    """Plan an instance and settle its files: every file done, or the last one failed with `fail`.
    With finish=False the files stay as planned (pending)."""
    files = files or [(f"BIBS_{instance_id}_1.xml", 1000, None)]
    ledger.create_plan(instance_id, job(instance_id, job_name, received),
                       [{"name": n, "size": c * 1500} for n, c, _ in files],
                       message=message(instance_id, received, job_name))
    if not finish:
        return ledger.get(instance_id)
    for i, (name, count, rejects) in enumerate(files):
        ledger.claim_file(instance_id, name, "w1", 600)
        if fail and i == len(files) - 1:
            ledger.fail_file(instance_id, name, fail, 5, worker_id="w1")
        else:
            ledger.finish_file(instance_id, name, result(name, count, rejects), worker_id="w1")
    ledger.manifest_written(instance_id, f"/Alma exports/{job_name}/{iso(received)[:10]}/manifest.json")
    return ledger.get(instance_id)


def generated_record(instance_id: str, received: datetime, *, records: int = 48213, rejects: int = 3,
                     failed: bool = False) -> JobRecord:
    """A finished instance built in memory (two files), as the workers would have left it."""
    name = "Export Bibliographic Records"
    stamp = iso(received)
    f1 = FileState(name=f"BIBS_{instance_id}_1.xml", state="done", attempts=1, started_at=stamp, finished_at=stamp,
                   result=result(f"BIBS_{instance_id}_1.xml", records, {"marc21-truncated": rejects}))
    f2 = FileState(name=f"BIBS_{instance_id}_2.xml", state="failed" if failed else "done", attempts=5 if failed else 1,
                   started_at=stamp, finished_at=stamp, error="SFTP: connection reset" if failed else None,
                   result=None if failed else result(f"BIBS_{instance_id}_2.xml", 100))
    return JobRecord(instance_id=instance_id, state="failed" if failed else "done",
                     job=job(instance_id, name, received), message=message(instance_id, received, name),
                     planned_at=stamp, started_at=stamp,
                     finished_at=iso(received + timedelta(minutes=3)), updated_at=stamp, files=[f1, f2],
                     manifest=ManifestState(state="done", location="/Alma exports/manifest.json", written_at=stamp))


def store_generated(container: Any, record: JobRecord) -> None:
    """Write a generated record as the ledger stores it, with its index entry (the head is written
    once for all of them: `jobindex.write_head`)."""
    container.upload_blob(f"jobs/{record.instance_id}.json", record.to_json(), overwrite=True)
    container.upload_blob(jobindex.blob_name(record.instance_id, jobindex.sort_time(record)), b"",
                          metadata=jobindex.encode(jobindex.stored(record)), overwrite=True)
