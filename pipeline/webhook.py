"""The Alma webhook listener's logic, independent of any HTTP framework.

`handle(method, params, headers, body)` answers the challenge, verifies the signature over the raw
body bytes, parses JSON or XML into an `Event`, dispatches on its action and returns a `Result`:
the HTTP answer plus the queue message to send (or None). It does no I/O, so it answers in well
under a millisecond and Alma's 5 s timeout is never at risk.

Status codes follow what Alma does with them: 2xx = done; 4xx = logged in Alma, never retried (so
only for requests a retry could never fix: bad signature, bad body); 5xx = retried about 1 h, 3 h
and 6 h later (so for our own misconfiguration: nothing is lost while the operator fixes it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline import settings
from pipeline.events import (
    EXPORT_LINK_COUNTER,
    Event,
    EventError,
    job_message,
    parse_event,
    serialize_message,
)
from pipeline.messages import check_id
from pipeline.settings import SettingError

log = logging.getLogger("pipeline.webhook")

MAX_BODY = 1024 * 1024
"""Largest accepted event body in bytes; a real JOB_END is about 3 KB."""
MAX_CHALLENGE = 1024
"""Longest accepted challenge in UTF-8 bytes; Alma's challenges are short tokens."""
SIGNATURE_HEADER = "x-exl-signature"

_JSON_HEADERS = {"Content-Type": "application/json", "X-Content-Type-Options": "nosniff"}
# The challenge is echoed unsigned: `<`, `>` and `&` are escaped too, so no sniffing client can
# read markup in the answer (JSON parsers decode the escapes back).
_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


@dataclass(frozen=True, slots=True)
class Response:
    """The HTTP answer: status, JSON body and headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=lambda: dict(_JSON_HEADERS))

    @property
    def text(self) -> str:
        """The body as JSON text (non-ASCII and `<>&` escaped, so any client decodes it and none sees markup)."""
        return json.dumps(self.body).translate(_HTML_ESCAPES)


@dataclass(frozen=True, slots=True)
class Result:
    """What the adapter does: answer `response` and, when `message` is set, send it to the queue."""

    response: Response
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The webhook's settings, read per request so a fixed app setting applies without a restart."""

    secret: str | None
    allow_unsigned: bool
    statuses: frozenset[str]
    job_filter: Any  # compiled regex or None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read and validate the settings; a bad value raises `SettingError` naming it."""
        return cls(
            secret=settings.get("ALMA_WEBHOOK_SECRET", environ),
            allow_unsigned=settings.get("ALMA_WEBHOOK_ALLOW_UNSIGNED", environ),
            statuses=frozenset(s.upper() for s in settings.get("EXPORT_JOB_STATUSES", environ)),
            job_filter=settings.get("EXPORT_JOB_FILTER", environ),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """A handler's verdict: queue `message`, or ignore the event for `reason`."""

    queued: bool
    reason: str
    message: str | None = None


Handler = Callable[[Event, Config, str], Decision]
"""A dispatch handler: (event, config, received_at) -> Decision. Raise `EventError` for a bad body."""


# --------------------------------------------------------------------------------------------------
# Dispatch


def handle_job_end(event: Event, config: Config, received_at: str) -> Decision:
    """Queue a finished export job; ignore other jobs and unfinished or failed ones."""
    job = event.job_instance
    if job is None:
        raise EventError("job_instance is missing (JOB_END events carry the job instance)")
    for what, value in (("job_instance.id", job.id), ("job_instance.job_info.id", job.job_id)):
        try:
            check_id(value, what)  # the ledger's rule: an id it would refuse is refused here, with the reason
        except ValueError as exc:
            raise EventError(str(exc)) from None
    if job.status.upper() not in config.statuses:
        return Decision(False, f"job status {job.status} is not one of EXPORT_JOB_STATUSES")
    if config.job_filter is not None:
        if not any(config.job_filter.search(text) for text in (job.job_id, job.job_name, job.name) if text):
            return Decision(False, f"job {job.job_id} does not match EXPORT_JOB_FILTER")
    elif EXPORT_LINK_COUNTER not in job.counters:
        return Decision(False, f"job {job.job_id} has no {EXPORT_LINK_COUNTER} counter (not an export job)")
    return Decision(True, "export job ended", serialize_message(job_message(event, received_at)))


HANDLERS: dict[str, Handler] = {
    "JOB_END": handle_job_end,
}
"""Action (upper case) -> handler. Actions not listed are answered 200 "ignored"."""


# --------------------------------------------------------------------------------------------------
# The request


def handle(
    method: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Result:
    """Answer one webhook request. Never raises; logs exactly one summary line (plus the warning
    that unsigned events are accepted, when they are)."""
    started = time.perf_counter()
    fields: dict[str, Any] = {"method": method}
    try:
        result, reason = _route(method.upper(), params, headers, body, environ, now, fields)
    except Exception:  # a bug, never bad input: 500 makes Alma deliver again, so nothing is lost
        log.exception("webhook internal error (%s)", _logfmt(fields))
        result = Result(Response(500, {"error": "internal error; Alma will deliver the event again"}))
        reason = "internal error"
    fields["status"] = result.response.status
    fields["reason"] = reason
    fields["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 3)
    status = result.response.status
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    log.log(level, "webhook %s", _logfmt(fields), extra={"webhook": fields})
    return result


def _route(
    method: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    environ: Mapping[str, str] | None,
    now: datetime | None,
    fields: dict[str, Any],
) -> tuple[Result, str]:
    if method == "GET":
        _warn_if_unsigned(environ)
        return _challenge(params, fields)
    if method != "POST":
        fields["decision"] = "rejected"
        return _error(405, f"method {method} is not allowed; use GET (challenge) or POST (event)",
                      {"Allow": "GET, POST"})
    return _event(headers, body, environ, now, fields)


_UNSIGNED_WARNING = ("ALMA_WEBHOOK_ALLOW_UNSIGNED is on: events are accepted without a signature check; "
                     "never use this in production")


def _warn_if_unsigned(environ: Mapping[str, str] | None) -> None:
    """The challenge is never signed, but the operator should still hear about the setting each time."""
    try:
        unsigned = settings.get("ALMA_WEBHOOK_ALLOW_UNSIGNED", environ)
    except SettingError:
        return  # reported (503) on the next event; the challenge does not depend on it
    if unsigned:
        log.warning(_UNSIGNED_WARNING)


def _challenge(params: Mapping[str, str], fields: dict[str, Any]) -> tuple[Result, str]:
    """Alma's activation check (unsigned): echo the challenge as JSON."""
    fields["decision"] = "challenge"
    challenge = params.get("challenge")
    if challenge is None or challenge == "":
        fields["decision"] = "rejected"
        return _error(400, "missing challenge query parameter (GET is only used for Alma's challenge)")
    if len(challenge.encode("utf-8", "surrogatepass")) > MAX_CHALLENGE:
        fields["decision"] = "rejected"
        return _error(400, f"challenge is longer than {MAX_CHALLENGE} bytes")
    return Result(Response(200, {"challenge": challenge})), "challenge answered"


def _event(
    headers: Mapping[str, str],
    body: bytes,
    environ: Mapping[str, str] | None,
    now: datetime | None,
    fields: dict[str, Any],
) -> tuple[Result, str]:
    fields["decision"] = "rejected"
    fields["bytes"] = len(body)
    if len(body) > MAX_BODY:
        return _error(413, f"body is {len(body)} bytes; the limit is {MAX_BODY}")
    try:
        config = Config.load(environ)
    except SettingError as exc:
        fields["decision"] = "unavailable"
        return _unavailable(f"{exc}; fix the app setting, Alma will deliver the event again")
    if config.allow_unsigned:
        log.warning(_UNSIGNED_WARNING)
    else:
        if not config.secret:
            fields["decision"] = "unavailable"
            return _unavailable("ALMA_WEBHOOK_SECRET is not set, so no event can be verified; set it to the "
                                "integration profile's secret, Alma will deliver the event again")
        problem = check_signature(config.secret, body, header(headers, SIGNATURE_HEADER))
        if problem:
            return _error(401, problem)
    try:
        event = parse_event(body)
        fields["event_id"] = event.id
        fields["action"] = event.action
        fields["format"] = event.format
        if event.job_instance is not None:
            fields["job"] = event.job_instance.job_id
            fields["instance"] = event.job_instance.id
        handler = HANDLERS.get(event.action_key)
        if handler is None:
            fields["decision"] = "ignored"
            reason = f"action {event.action} is not handled"
            return Result(Response(200, {"status": "ignored", "reason": reason})), reason
        decision = handler(event, config, _timestamp(now))
    except EventError as exc:
        return _error(400, str(exc))
    if not decision.queued or decision.message is None:
        fields["decision"] = "ignored"
        return Result(Response(200, {"status": "ignored", "reason": decision.reason})), decision.reason
    fields["decision"] = "queued"
    return Result(Response(202, {"status": "queued", "event_id": event.id}), decision.message), decision.reason


def check_signature(secret: str, body: bytes, signature: str | None) -> str | None:
    """Compare X-Exl-Signature with Base64(HMAC-SHA256(secret, raw body)) in constant time.
    The raw bytes are hashed: re-serialising the JSON would change them. Returns the problem or None."""
    if signature is None or not signature.strip():
        return "missing X-Exl-Signature header"
    expected = base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest())
    given = signature.strip().encode("utf-8", "replace")
    if not hmac.compare_digest(expected, given):
        return "X-Exl-Signature does not match the body (wrong secret or altered body)"
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name (HTTP header names are case-insensitive)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _timestamp(now: datetime | None) -> str:
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, message: str, extra_headers: dict[str, str] | None = None) -> tuple[Result, str]:
    headers = dict(_JSON_HEADERS)
    headers.update(extra_headers or {})
    return Result(Response(status, {"error": message}, headers)), message


def _unavailable(message: str) -> tuple[Result, str]:
    return _error(503, message, {"Retry-After": "3600"})


_LOG_KEYS = ("decision", "status", "event_id", "action", "job", "instance", "format", "method", "bytes",
             "elapsed_ms", "reason")


def _logfmt(fields: Mapping[str, Any]) -> str:
    """key=value pairs; text from the request is JSON-quoted and cut short so it cannot forge lines."""
    parts = []
    for key in _LOG_KEYS:
        if key not in fields:
            continue
        value = fields[key]
        if isinstance(value, str):
            value = value if len(value) <= 200 else value[:200] + "..."
            if not value or not value.isprintable() or any(c in value for c in ' "=\\'):
                value = json.dumps(value)
        parts.append(f"{key}={value}")
    return " ".join(parts)
