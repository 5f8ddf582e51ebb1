"""One short summary per finished or failed job instance, posted to NOTIFY_URL.

People want to hear that last night's export arrived (or did not) without opening the ledger. The
body is JSON that both Slack and Teams incoming webhooks show: `text` (what Slack shows), the
MessageCard fields Teams uses (`@type`, `summary`, `title`, `themeColor`, `sections` with facts), and
the same figures as structured data under `pipeline` for any other receiver. Sending is best effort:
a timeout or an error is logged and never fails the job, and the URL (which carries a token) is
never logged, only its host (the redaction filter in `pipeline.redact` also hides it from the HTTP
libraries' own DEBUG lines).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import requests

from pipeline import settings
from pipeline.ledger import JobRecord

log = logging.getLogger(__name__)

MAX_FAILURES_LISTED = 5
MAX_ERROR_CHARS = 200
MAX_TIMEOUT = 10.0
"""Longest wait, in seconds, for the receiver to connect and for each read of its answer."""
MAX_ANSWER_BYTES = 1024
"""How much of the receiver's answer is read (for the log line); the rest is never downloaded."""


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

    Never raises: the job's outcome does not depend on a chat service being up. The receiver is not
    trusted: https only (http to a loopback address for tests), redirects are not followed (a 307
    would re-POST the summary wherever the receiver points), connect and read each wait at most
    `MAX_TIMEOUT` seconds, and its answer is read up to `MAX_ANSWER_BYTES` and logged escaped.
    """
    iid = getattr(record, "instance_id", "?")
    host = "?"
    wait = min(max(timeout, 0.1), MAX_TIMEOUT)
    try:
        url = (url or settings.get("NOTIFY_URL") or "").strip()
        if not url:
            log.debug("NOTIFY_URL is not set: no notification for job instance %s", iid)
            return False
        host = urlsplit(url).hostname or "?"
        settings.https_url("NOTIFY_URL", url)
        body = payload(record, location)
        with requests.post(url, json=body, timeout=(wait, wait), allow_redirects=False, stream=True) as response:
            answer = response.raw.read(MAX_ANSWER_BYTES, decode_content=True) or b""
    except settings.SettingError as exc:
        log.warning("notification for job instance %s not sent: %s", iid, exc)
        return False
    except requests.RequestException as exc:
        log.warning("notification for job instance %s to %s failed: %s", iid, host, type(exc).__name__)
        return False
    except Exception:  # a bad setting or an odd record must not fail the job either
        log.exception("notification for job instance %s could not be sent", iid)
        return False
    if response.is_redirect or not response.ok:
        what = "redirected (not followed)" if response.is_redirect else "answered"
        log.warning("notification for job instance %s: %s %s %s %s", iid, host, what, response.status_code,
                    quote(answer.decode("utf-8", "replace")))
        return False
    log.info("notification for job instance %s sent to %s", iid, host)
    return True


def quote(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Text from a receiver, safe for one log line: cut to `limit` characters, then JSON-quoted, so a
    newline or a control character in it can never start a forged line."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(cut, ensure_ascii=True)
