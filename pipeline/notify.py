"""One short summary per finished or failed job instance, posted to NOTIFY_URL.

People want to hear that last night's export arrived (or did not) without opening the ledger. The
body is JSON that both Slack and Teams incoming webhooks show: `text` (what Slack shows), the
MessageCard fields Teams uses (`@type`, `summary`, `title`, `themeColor`, `sections` with facts), and
the same figures as structured data under `pipeline` for any other receiver. Sending is best effort:
a timeout or an error is logged and never fails the job, and the URL (which carries a token) is
never logged, only its host.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import requests

from pipeline import settings
from pipeline.ledger import JobRecord

log = logging.getLogger(__name__)

MAX_FAILURES_LISTED = 5
MAX_ERROR_CHARS = 200


def _label(value: Any) -> str:
    """Alma code-table values arrive as {"value", "desc"}; people read the description."""
    if isinstance(value, dict):
        return str(value.get("desc") or value.get("value") or "")
    return "" if value is None else str(value)


def summary(record: JobRecord, location: str | None = None) -> dict[str, Any]:
    """The figures of one job instance, as the structured part of the notification."""
    totals = record.totals()
    failed = [f for f in record.files if f.state == "failed"]
    return {
        "instance_id": record.instance_id,
        "job_id": _label(record.job.get("job_id")),
        "job_name": _label(record.job.get("job_name")) or record.instance_id,
        "submitted_by": _label(record.job.get("submitted_by")) or "unknown",
        "state": record.state,
        "records_out": totals.get("records_out", 0),
        "rejected": totals.get("rejected", 0),
        "files": len(record.files),
        "files_done": sum(1 for f in record.files if f.state == "done"),
        "files_failed": [{"name": f.name, "error": (f.error or "")[:MAX_ERROR_CHARS]} for f in failed],
        "error": _label(record.info.get("error")) or None,
        "location": location or record.manifest.location,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    }


def payload(record: JobRecord, location: str | None = None) -> dict[str, Any]:
    """The JSON body: Slack reads `text`, Teams reads the MessageCard fields, others `pipeline`."""
    s = summary(record, location)
    ok = s["state"] == "done"
    head = f"Alma export \"{s['job_name']}\" {'finished' if ok else 'FAILED'}"
    lines = [
        f"{head}: {s['records_out']:,} records out, {s['rejected']:,} rejected, "
        f"{s['files_done']}/{s['files']} files (instance {s['instance_id']}, submitted by {s['submitted_by']})."
    ]
    if s["location"]:
        lines.append(f"Files: {s['location']}")
    if s["error"]:
        lines.append(f"Error: {s['error'][:MAX_ERROR_CHARS]}")
    for f in s["files_failed"][:MAX_FAILURES_LISTED]:
        lines.append(f"Failed: {f['name']}: {f['error']}")
    if len(s["files_failed"]) > MAX_FAILURES_LISTED:
        lines.append(f"... and {len(s['files_failed']) - MAX_FAILURES_LISTED} more failed files")
    if not ok:
        lines.append(f"Re-run: python -m pipeline requeue {s['instance_id']}")
    facts = [
        ("Job", s["job_name"]), ("Submitted by", s["submitted_by"]), ("State", s["state"]),
        ("Records out", f"{s['records_out']:,}"), ("Rejected", f"{s['rejected']:,}"),
        ("Files", f"{s['files_done']}/{s['files']} done"), ("Where", s["location"] or "-"),
    ]
    return {
        "text": "\n".join(lines),
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": head,
        "title": head,
        "themeColor": "2EB886" if ok else "D63333",
        "sections": [{"facts": [{"name": k, "value": str(v)} for k, v in facts]}],
        "pipeline": s,
    }


def send(record: JobRecord, location: str | None = None, *, url: str | None = None, timeout: float = 10.0) -> bool:
    """Post the summary to `url` (default: setting NOTIFY_URL). True when the receiver said 2xx.

    Never raises: the job's outcome does not depend on a chat service being up.
    """
    iid = getattr(record, "instance_id", "?")
    host = "?"
    try:
        url = url or settings.get("NOTIFY_URL")
        if not url:
            log.debug("NOTIFY_URL is not set: no notification for job instance %s", iid)
            return False
        host = urlsplit(url).hostname or "?"
        body = payload(record, location)
        response = requests.post(url, json=body, timeout=(timeout, timeout))
    except requests.RequestException as exc:
        log.warning("notification for job instance %s to %s failed: %s", iid, host, type(exc).__name__)
        return False
    except Exception:  # a bad setting or an odd record must not fail the job either
        log.exception("notification for job instance %s could not be sent", iid)
        return False
    if not response.ok:
        log.warning("notification for job instance %s: %s answered %s %s",
                    iid, host, response.status_code, response.text[:200])
        return False
    log.info("notification for job instance %s sent to %s", iid, host)
    return True
