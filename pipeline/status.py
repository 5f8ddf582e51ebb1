"""The operations view: what the pipeline did, per job instance, for people and for scripts.

One set of data serves the `job_status` HTTP function (HTML for library staff, JSON with
`Accept: application/json` or `?format=json`), `python -m pipeline status`, and the demo's
out/status.html. The listing reads one page of the job index (pipeline/jobindex.py) plus the ledger
records of the few instances on it that are not finished, so its cost does not grow with the number
of instances. Every value shown comes from Alma or an export file and is untrusted: templates are
autoescaped and the page carries a Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from pipeline.ledger import JobRecord, Ledger

PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
CHART_DAYS = 30
CHART_RUNS = 60  # the chart's runs at most: a month of nightly runs with room for re-runs
FINAL = ("done", "failed")
STATES = {
    "planned": "Alma finished the job and the files are planned; no file has started yet.",
    "running": "Files are being transformed and delivered.",
    "done": "Every file was delivered and manifest.json was written.",
    "failed": "The job could not be planned, or a file failed for good; see the reason.",
    "stuck": "Not finished and nothing has happened for longer than any retry would take; re-run it.",
}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _parse(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        value = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stuck_after() -> tuple[float, float]:
    """(seconds without any ledger change, seconds past a lapsed file lease) after which an
    unfinished instance is stuck: longer than a whole invocation plus every retry of its message."""
    from pipeline.hostconfig import current

    host = current()
    quiet = host.function_timeout + host.max_dequeue_count * max(host.visibility_timeout, 30.0) + 600.0
    return quiet, max(host.visibility_timeout, 30.0) + 600.0


def requeue_command(instance_id: str) -> str:
    return f"python -m pipeline requeue {instance_id}"


def _state(summary: Mapping[str, Any], now: datetime) -> tuple[str, str | None]:
    """The state a person sees, and for failed or stuck instances the reason."""
    state = summary.get("state") or "pending"
    if state == "failed":
        return "failed", summary.get("error") or "a file failed for good (see the instance page)"
    if state == "done":
        return "done", None
    quiet, lease_grace = stuck_after()
    updated = _parse(summary.get("updated_at"))
    lease = _parse(summary.get("oldest_lease"))
    if lease is not None and (now - lease).total_seconds() > lease_grace:
        return "stuck", (f"a file's worker stopped: its lease lapsed at {summary['oldest_lease']} and no "
                         "other worker took the file over")
    if updated is not None and (now - updated).total_seconds() > quiet:
        return "stuck", f"no progress since {summary['updated_at']}; its queue messages are gone or failing"
    return ("running" if state == "running" else "planned"), None


def _where(destination: str | None) -> dict[str, str] | None:
    if not destination:
        return None
    if destination.startswith("dropbox:"):
        return {"kind": "Dropbox", "path": destination[len("dropbox:"):] or "/"}
    return {"kind": "folder", "path": destination.removeprefix("file://")}


def row(summary: Mapping[str, Any], now: datetime, link: Callable[[str], str] | None = None) -> dict[str, Any]:
    """One instance as the listing shows it (and as its JSON says it)."""
    state, reason = _state(summary, now)
    iid = summary["instance_id"]
    return {
        "instance_id": iid,
        "job_id": summary.get("job_id") or "",
        "job_name": summary.get("job_name") or "",
        "instance_name": summary.get("instance_name") or "",
        "state": state,
        "started_at": summary.get("started_at") or summary.get("planned_at"),
        "ended_at": summary.get("finished_at"),
        "records_in": summary.get("records_in", 0),
        "records_out": summary.get("records_out", 0),
        "rejected": summary.get("rejected", 0),
        "dropped": summary.get("dropped", 0),
        "bytes_in": summary.get("bytes_in", 0),
        "files_total": summary.get("files", 0),
        "files_done": summary.get("files_done", 0),
        "files_failed": summary.get("files_failed", 0),
        "rejects_by_reason": [{"reason": k, "count": v} for k, v in (summary.get("reasons") or {}).items()],
        "outputs": _where(summary.get("destination")),
        "manifest": summary.get("manifest"),
        "reason": reason,
        "requeue": requeue_command(iid) if state in ("failed", "stuck") else None,
        "url": link(iid) if link else None,
    }


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _stamp(now: datetime) -> str:
    return now.isoformat(timespec="seconds").replace("+00:00", "Z")


def listing(ledger: Ledger, *, token: str | None = None, size: int = PAGE_SIZE, now: datetime | None = None,
            link: Callable[[str], str] | None = None) -> dict[str, Any]:
    """One page of instances, newest first, and (on the first page) the chart of the last 30 days."""
    from pipeline import jobindex

    now = _now(now)
    size = max(1, min(int(size), MAX_PAGE_SIZE))
    page = ledger.index_page(size, token, at_least=0 if token else CHART_RUNS)
    rows = []
    for summary in page.summaries:
        if summary.get("state") not in FINAL:  # the index may lag: ask the ledger
            record = ledger.get(summary["instance_id"])
            if record is None:
                continue
            summary = jobindex.summary(record)
        rows.append(row(summary, now, link))
    return {"generated_at": _stamp(now), "instances": rows, "next_page": page.next_token,
            "page_size": size, "chart": None if token else chart(page.seen, now), "states": STATES}


def chart(summaries: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Records out and rejected per run over the last CHART_DAYS days (of the newest CHART_RUNS
    runs, which the first page's listing call reads anyway), oldest first."""
    since = now - timedelta(days=CHART_DAYS)
    runs = []
    for s in summaries[:CHART_RUNS]:
        when = _parse(s.get("listed_at"))
        if when is None or when < since:
            continue
        runs.append({"instance_id": s["instance_id"], "date": s["listed_at"][:10], "at": s["listed_at"],
                     "job_name": s.get("job_name") or "", "state": s.get("state"),
                     "records_out": s.get("records_out", 0), "rejected": s.get("rejected", 0)})
    runs.reverse()
    return {"days": CHART_DAYS, "since": _stamp(since), "runs": runs, "svg": _bars(runs, since, now)}


def _bars(runs: list[dict[str, Any]], since: datetime, now: datetime) -> dict[str, Any]:
    """Geometry of the two bar rows (records out, rejected), each on its own scale so a handful of
    rejects next to tens of thousands of records still shows. Bars stand at their run's time, so a
    night without a run is a visible gap."""
    width, height, bar = 640, 70, 6.0
    span = max((now - since).total_seconds(), 1.0)
    rows = []
    for key, label in (("records_out", "Records out"), ("rejected", "Rejected")):
        top = max((r[key] for r in runs), default=0)
        bars = []
        for r in runs:
            when = _parse(r["at"]) or since
            x = (width - bar) * min(max((when - since).total_seconds() / span, 0.0), 1.0)
            h = 0.0 if not r[key] else max(1.0, height * r[key] / top)  # a tiny count still shows
            bars.append({"x": round(x, 1), "y": round(height - h, 1), "w": bar, "h": round(h, 1),
                         "title": f"{r['date']} {r['job_name']}: {r[key]:,} {label.lower()}"})
        rows.append({"key": key, "label": label, "max": top, "bars": bars})
    return {"width": width, "height": height, "rows": rows, "first": _stamp(since)[:10], "last": _stamp(now)[:10]}


def _file(f: Any) -> dict[str, Any]:
    from pipeline import jobindex

    r = f.result or {}
    return {
        "name": f.name, "state": f.state, "attempts": f.attempts, "continuations": f.continuations,
        "started_at": f.started_at, "finished_at": f.finished_at, "seconds": r.get("seconds"),
        "records_in": r.get("records_in"), "records_out": r.get("records_out"), "rejected": r.get("rejected"),
        "dropped": r.get("dropped"), "bytes_in": r.get("bytes_in"), "size": (f.info or {}).get("size"),
        "input_format": r.get("input_format"),
        "rejects_by_reason": [{"reason": k, "count": v}
                              for k, v in jobindex.by_count(r.get("rejected_by_reason") or {}).items()],
        "outputs": [{k: o.get(k) for k in ("path", "kind", "size", "sha256", "content_hash")}
                    for o in r.get("outputs", [])],
        "error": f.error, "worker": f.worker if f.state == "running" else None,
        "lease_until": f.lease_until if f.state == "running" else None,
    }


def _duration(start: str | None, end: str | None) -> float | None:
    a, b = _parse(start), _parse(end)
    return round((b - a).total_seconds(), 3) if a and b else None


def instance(ledger: Ledger, instance_id: str, *, now: datetime | None = None) -> dict[str, Any] | None:
    """One instance in full: files, outputs and hashes, reasons, timings, manifest. None if unknown.
    An id that is not a plain id raises ValueError (the caller answers 400)."""
    from pipeline import jobindex
    from pipeline.jobs import manifest

    now = _now(now)
    record = ledger.get(instance_id)
    if record is None:
        return None
    out = row(jobindex.summary(record), now)
    out.update({
        "generated_at": _stamp(now),
        "job": {k: v for k, v in record.job.items() if k in ("job_id", "job_name", "instance_name", "institution",
                                                              "status", "end_time", "submitted_by", "format",
                                                              "rules", "per_record", "destination")},
        "timings": {"received_at": (record.message or {}).get("received_at"), "planned_at": record.planned_at,
                    "started_at": record.started_at, "finished_at": record.finished_at,
                    "updated_at": record.updated_at,
                    "seconds": _duration(record.started_at or record.planned_at, record.finished_at)},
        "files": [_file(f) for f in record.files],
        "manifest": _manifest(record, manifest),
        "states": STATES,
    })
    return out


def _manifest(record: JobRecord, build: Callable[[JobRecord], dict[str, Any]]) -> dict[str, Any]:
    m = record.manifest
    content = None
    if m.state == "done":  # what manifest.json says, rebuilt from the same ledger record it was written from
        content = {**build(record), "finished_at": record.finished_at}
    return {"state": m.state, "location": m.location, "written_at": m.written_at, "content": content}


# ---- presentation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Where the page's links go: the function's own routes (keeping its `code` key, which a
    browser cannot send as a header), or files beside each other (the demo's out/status.html)."""

    base: str = "/api/status"
    query: dict[str, str] = field(default_factory=dict)
    static: bool = False

    def _q(self, extra: dict[str, str] | None = None) -> str:
        q = {**self.query, **(extra or {})}
        return f"?{urlencode(q)}" if q else ""

    def instance(self, instance_id: str) -> str:
        if self.static:
            return static_name(instance_id)
        return f"{self.base}/{quote(instance_id, safe='')}{self._q()}"

    def listing(self) -> str:
        return "status.html" if self.static else f"{self.base}{self._q()}"

    def page(self, token: str) -> str | None:
        return None if self.static else f"{self.base}{self._q({'page': token})}"

    def json(self, instance_id: str | None = None) -> str | None:
        if self.static:
            return None
        path = self.base if instance_id is None else f"{self.base}/{quote(instance_id, safe='')}"
        return f"{path}{self._q({'format': 'json'})}"


def static_name(instance_id: str) -> str:
    return f"status-{instance_id}.html"


def write_static(ledger: Ledger, folder: Any, instance_ids: list[str]) -> list[Any]:
    """The listing as `status.html` and each given instance as `status-{id}.html` in `folder`,
    linked to each other: a snapshot to open without a server (the demo writes it)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    links = Links(static=True)
    written = [folder / "status.html"]
    written[0].write_text(render_listing(listing(ledger), links), encoding="utf-8")
    for iid in instance_ids:
        data = instance(ledger, iid)
        if data is not None:
            written.append(folder / static_name(iid))
            written[-1].write_text(render_instance(data, links), encoding="utf-8")
    return written


_env: Any = None


def _environment() -> Any:
    global _env
    if _env is None:
        from jinja2 import Environment, PackageLoader

        _env = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=True,
                           trim_blocks=True, lstrip_blocks=True)
        _env.filters["num"] = lambda v: "–" if v is None else f"{v:,}"
        _env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
        _env.filters["when"] = lambda v: "–" if not v else str(v).replace("T", " ")[:19]  # the footer says UTC
    return _env


def render_listing(data: dict[str, Any], links: Links) -> str:
    return _environment().get_template("status_list.html").render(data=data, links=links)


def render_instance(data: dict[str, Any], links: Links) -> str:
    return _environment().get_template("status_instance.html").render(data=data, links=links)


def to_json(data: dict[str, Any]) -> str:
    """The JSON form: the same data, less the chart's drawing geometry (that is for the page)."""
    if data.get("chart"):
        data = {**data, "chart": {k: v for k, v in data["chart"].items() if k != "svg"}}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---- the HTTP function's logic ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What `job_status` returns: status code, body, content type, headers."""

    status: int
    body: str
    mimetype: str
    headers: dict[str, str] = field(default_factory=lambda: dict(_HEADERS))


def _wants_json(params: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    fmt = (params.get("format") or "").lower()
    if fmt:
        return fmt == "json"
    accept = next((v for k, v in headers.items() if k.lower() == "accept"), "") or ""
    return "application/json" in accept.lower() and "text/html" not in accept.lower()


def _error(status: int, message: str, as_json: bool) -> Answer:
    if as_json:
        return Answer(status, to_json({"error": message}), "application/json")
    html = _environment().get_template("status_error.html").render(status=status, message=message)
    return Answer(status, html, "text/html")


def base_path(url: str, instance_id: str | None) -> str:
    """The listing's path as the request reached it (the host's route prefix may differ from /api)."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(url).path.rstrip("/") or "/api/status"
    if instance_id and unquote(path).endswith("/" + instance_id):
        path = path[: path.rfind("/")]
    return path


def handle(ledger_factory: Callable[[], Ledger], method: str, url: str, params: Mapping[str, str],
           headers: Mapping[str, str], instance_id: str | None = None) -> Answer:
    """GET status[/{instance_id}]: the listing or one instance, as HTML or JSON."""
    as_json = _wants_json(params, headers)
    if method.upper() not in ("GET", "HEAD"):
        return _error(405, "only GET is supported", as_json)
    query = {"code": params["code"]} if params.get("code") else {}
    links = Links(base=base_path(url, instance_id), query=query)
    ledger = ledger_factory()
    if instance_id:
        try:
            data = instance(ledger, instance_id)
        except ValueError as exc:
            return _error(400, str(exc), as_json)
        if data is None:
            return _error(404, f"the ledger has no job instance {instance_id}", as_json)
        if as_json:
            return Answer(200, to_json(data), "application/json")
        return Answer(200, render_instance(data, links), "text/html")
    try:
        size = int(params.get("size") or PAGE_SIZE)
    except ValueError:
        return _error(400, f"size must be a number of instances per page, got {params.get('size')!r}", as_json)
    from azure.core.exceptions import HttpResponseError

    try:
        data = listing(ledger, token=params.get("page") or None, size=size, link=links.instance)
    except (HttpResponseError, ValueError) as exc:
        if not params.get("page") or getattr(exc, "status_code", 400) != 400:
            raise
        return _error(400, "the page link is not valid (any more); start again from the first page", as_json)
    if as_json:
        return Answer(200, to_json(data), "application/json")
    return Answer(200, render_listing(data, links), "text/html")
