"""Tell the person who ran an Alma job that it ended: one email and/or SMS through Azure Communication Services.

NOTIFY_URL tells a team; the cataloguer who ran a one-off export wants to hear it themselves when
the files are in Dropbox. The job instance names its submitter (a staff user's primary id, or
`System` / `API`), Alma's Users API holds that person's preferred email address and the phone
number marked preferred for SMS, and Communication Services sends both.

Like notify.py this never fails a job: every problem is logged and kept in the ledger in words that
name the user's primary id only, never an address or a number. At most one message per job
instance: `info.submitter_notified` in the ledger is claimed by an ETag-conditional update before
anything is sent, so a second delivery of the last file sends nothing. A crash between the claim
and the send loses that message rather than risking a second one (a duplicate text is worse).
"""

from __future__ import annotations

import html
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pipeline import settings
from pipeline.notify import summary
from pipeline.settings import SettingError

log = logging.getLogger(__name__)

LEDGER_KEY = "submitter_notified"
CHANNELS = ("email", "sms")
NOT_PEOPLE = frozenset({"system", "api"})  # Alma's submitters of scheduled and API-started runs
SMS_MAX = 160  # one GSM-7 segment
SMS_MAX_UNICODE = 70  # one UCS-2 segment, when the text has a character GSM-7 lacks
EMAIL_POLL_SECONDS = 2.0  # between polls of the email send operation
EMAIL_WAIT_SECONDS = 30.0  # after this the email counts as accepted; the SDK polls on in the background
CACHE_SECONDS = 600.0
MAX_REASON_CHARS = 300
MAX_NAME_CHARS = 80
ALMA_USER_NOT_FOUND = "401861"
_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9]\d{6,14}")


class SendError(Exception):
    """Communication Services took the request but did not send (a failed operation, a refused recipient)."""


# ---- who ------------------------------------------------------------------------------------------


def channels(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """NOTIFY_SUBMITTER as the channels to use, in a fixed order; () when off."""
    value = settings.get("NOTIFY_SUBMITTER", environ)
    if "off" in value:
        if len(value) > 1:
            raise SettingError("NOTIFY_SUBMITTER", "is off or a list of channels (email, sms), not both")
        return ()
    return tuple(c for c in CHANNELS if c in value)


def submitter_id(record: Any) -> str | None:
    """The primary id of the staff user who submitted the job, or None for System, API or unknown."""
    job = getattr(record, "job", None) or {}
    uid = job.get("submitted_by_id")
    if uid is None and isinstance(job.get("submitted_by"), dict):  # the raw Alma code-table value
        uid = job["submitted_by"].get("value")
    uid = str(uid or "").strip()
    return uid if uid and uid.lower() not in NOT_PEOPLE else None


@dataclass(frozen=True)
class Contact:
    """Where a user wants to be reached; the values stay out of repr so they cannot slip into a log."""

    primary_id: str
    email: str | None = field(default=None, repr=False)
    sms: str | None = field(default=None, repr=False)
    sms_not_international: bool = False  # a number is marked for SMS but has no country code


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _items(value: Any) -> list[dict[str, Any]]:
    """Alma lists arrive as a list, or as one object when converted from XML."""
    if isinstance(value, dict):
        value = [value]
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def e164(raw: str | None) -> str | None:
    """A phone number in the international form SMS needs (+ country code, digits), or None.

    Spaces, dots, dashes, slashes and brackets are dropped and a leading 00 becomes +; a national
    number (no country code) is not guessed at.
    """
    number = _PHONE_PUNCTUATION.sub("", raw or "")
    if number.startswith("00"):
        number = "+" + number[2:]
    return number if _E164.fullmatch(number) else None


def contact_from_user(primary_id: str, user: Mapping[str, Any]) -> Contact:
    """The preferred email address (or the only one) and the phone number marked preferred for SMS."""
    info = user.get("contact_info") if isinstance(user.get("contact_info"), dict) else {}
    emails = [e for e in _items(info.get("email")) if str(e.get("email_address") or "").strip()]
    email = next((e for e in emails if _flag(e.get("preferred"))), emails[0] if len(emails) == 1 else None)
    phone = next((p for p in _items(info.get("phone"))
                  if _flag(p.get("preferred_sms")) and str(p.get("phone_number") or "").strip()), None)
    sms = e164(str(phone["phone_number"])) if phone else None
    return Contact(primary_id, str(email["email_address"]).strip() if email else None, sms,
                   sms_not_international=phone is not None and sms is None)


_cache: dict[str, tuple[float, Contact | None]] = {}


def clear_cache() -> None:
    """Forget looked-up users (tests; a long-lived process forgets them after CACHE_SECONDS anyway)."""
    _cache.clear()


def lookup(primary_id: str, alma_factory: Callable[[], Any]) -> Contact | None:
    """The user's contact from the Alma Users API, or None when Alma does not know the user.

    Cached per process for CACHE_SECONDS, so a run that finishes many jobs of one person asks once.
    Other Alma errors raise AlmaError (not cached).
    """
    from pipeline.alma import AlmaError

    hit = _cache.get(primary_id)
    if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
        return hit[1]
    try:
        with alma_factory() as alma:
            contact: Contact | None = contact_from_user(primary_id, alma.get_user(primary_id))
    except AlmaError as exc:
        if exc.code != ALMA_USER_NOT_FOUND and exc.status != 404:
            raise
        contact = None
    _cache[primary_id] = (time.monotonic(), contact)
    return contact


# ---- what -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One notification in its three forms."""

    subject: str
    text: str
    html: str
    sms: str


def dropbox_link(location: str, app_folder: str | None = None) -> str | None:
    """The Dropbox web address of a `dropbox:/path` destination (under the app's folder when it has one)."""
    if not location.startswith("dropbox:"):
        return None
    path = "/" + location[len("dropbox:"):].strip("/")
    if app_folder:
        path = "/" + app_folder.strip("/") + path
    return "https://www.dropbox.com/home" + quote(path.rstrip("/"), safe="/")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)].rstrip() + "..."


def _sms_limit(text: str) -> int:
    return SMS_MAX if all(c in _GSM7 for c in text) else SMS_MAX_UNICODE


def _fit_sms(name: str, render: Callable[[str], str]) -> str | None:
    """`render(name)` in one SMS segment, shortening the job name as far as it stays recognisable."""
    text = render(name)
    over = len(text) - _sms_limit(text)
    if over <= 0:
        return text
    keep = len(name) - over - 3
    if keep < 12:
        return None
    text = render(name[:keep].rstrip() + "...")
    return text if len(text) <= _sms_limit(text) else None


def build_message(record: Any, location: str | None = None, environ: Mapping[str, str] | None = None) -> Message:
    """The message for the submitter: job, instance, state, records out and rejected, where the files
    are (a link for Dropbox), and for a failure the reason and what to do."""
    s = summary(record, location)
    ok = s["state"] == "done"
    iid = s["instance_id"]
    name = _short(s["job_name"], MAX_NAME_CHARS)
    where = location or getattr(record, "job", {}).get("destination") or s["location"] or ""
    link = dropbox_link(where, settings.get("DROPBOX_APP_FOLDER", environ)) if where else None
    reason = None
    if not ok:
        failed = s["files_failed"]
        reason = s["error"] or "; ".join(f"{f['name']}: {f['error']}" for f in failed[:2]) or "unknown"
        if len(failed) > 2:
            reason += f" (and {len(failed) - 2} more failed files)"
        reason = _short(reason, MAX_REASON_CHARS)
    todo = ("Whatever finished is in the folder above, with a _FAILED.json saying why. Ask whoever runs the "
            "export pipeline to look at "
            f"job instance {iid}; once the cause is fixed they can re-run it with: python -m pipeline requeue {iid}")
    subject = f"Alma export \"{name}\" {'finished' if ok else 'FAILED'}"
    facts = [("Job", name), ("Job instance", iid), ("State", s["state"]),
             ("Records out", f"{s['records_out']:,}"), ("Rejected", f"{s['rejected']:,}"),
             ("Files", f"{s['files_done']} of {s['files']} done")]
    if where:
        facts.append(("Where", link or where))
    lines = [f"Your Alma export \"{name}\" {'finished' if ok else 'FAILED'}.", ""]
    lines += [f"{k}: {v}" for k, v in facts]
    if reason:
        lines += ["", f"Why: {reason}", "", f"What to do: {todo}"]
    rows = "".join(
        f"<tr><th align=\"left\">{html.escape(k)}</th><td>"
        + (f"<a href=\"{html.escape(v)}\">{html.escape(v)}</a>" if k == "Where" and link else html.escape(v))
        + "</td></tr>"
        for k, v in facts
    )
    body = (f"<p>Your Alma export <b>{html.escape(name)}</b> {'finished' if ok else '<b>FAILED</b>'}.</p>"
            f"<table>{rows}</table>")
    if reason:
        body += f"<p><b>Why:</b> {html.escape(reason)}</p><p><b>What to do:</b> {html.escape(todo)}</p>"
    figures = f"{s['records_out']:,} records out, {s['rejected']:,} rejected"
    if ok:
        variants: list[Callable[[str], str]] = [
            lambda n: f"Alma export \"{n}\" done: {figures}. {link or where}".rstrip(),
            lambda n: f"Alma export \"{n}\" done: {figures}. Details by email or in the manifest.",
            lambda n: f"Alma export \"{n}\" done: {s['records_out']:,} records out.",
        ]
    else:
        failed_files = f"{len(s['files_failed'])} of {s['files']} files failed" if s["files_failed"] else "failed"
        variants = [
            lambda n: f"Alma export \"{n}\" FAILED ({failed_files}), instance {iid}. Ask the export team to "
                      "requeue it once fixed.",
            lambda n: f"Alma export \"{n}\" FAILED, instance {iid}.",
        ]
    sms = next((t for t in (_fit_sms(s["job_name"], v) for v in variants) if t), None)
    if sms is None:  # only a very long instance id gets here
        sms = _short(variants[-1]("Alma job"), SMS_MAX_UNICODE)
    return Message(subject, "\n".join(lines) + "\n", f"<html><body>{body}</body></html>", sms)


# ---- how ------------------------------------------------------------------------------------------


def _credential() -> Any:
    from azure.identity import DefaultAzureCredential  # only needed in Azure; slow to import

    return DefaultAzureCredential()


class Sender:
    """The two Communication Services clients (only those of the channels in use), built from settings."""

    def __init__(self, *, email_client: Any = None, sms_client: Any = None, email_sender: str | None = None,
                 sms_from: str | None = None, poll_interval: float | None = None,
                 wait: float = EMAIL_WAIT_SECONDS, transport: Any = None) -> None:
        self.email_client = email_client
        self.sms_client = sms_client
        self.transport = transport  # shared by both clients; the SMS client has no close() of its own
        self.email_sender = email_sender
        self.sms_from = sms_from
        self.poll_interval = EMAIL_POLL_SECONDS if poll_interval is None else poll_interval
        self.wait = wait

    @classmethod
    def from_settings(cls, wanted: tuple[str, ...], environ: Mapping[str, str] | None = None,
                      **client_kwargs: Any) -> Sender:
        """ACS_CONNECTION_STRING (access key, HMAC-signed requests) or ACS_ENDPOINT with managed identity.

        `client_kwargs` go to the HTTP transport both SDK clients share (e.g. `connection_verify`);
        retries are bounded so a throttled service cannot hold a worker for minutes.
        """
        from azure.core.pipeline.transport import RequestsTransport

        conn = settings.get("ACS_CONNECTION_STRING", environ)
        endpoint = settings.get("ACS_ENDPOINT", environ)
        if not conn and not endpoint:
            raise SettingError("ACS_CONNECTION_STRING", "is not set, and neither is ACS_ENDPOINT "
                               "(Communication Services through managed identity)")
        if endpoint and not conn and not endpoint.startswith("https://"):
            raise SettingError("ACS_ENDPOINT", f"must start with https://, got {endpoint!r}")
        sender = cls(transport=RequestsTransport(**client_kwargs))
        options = {"retry_total": 4, "retry_backoff_max": 30, "transport": sender.transport}
        if "email" in wanted:
            from azure.communication.email import EmailClient

            sender.email_sender = settings.require("ACS_EMAIL_SENDER", environ)
            sender.email_client = (EmailClient.from_connection_string(conn, **options) if conn
                                   else EmailClient(endpoint, _credential(), **options))
        if "sms" in wanted:
            from azure.communication.sms import SmsClient

            sender.sms_from = settings.require("ACS_SMS_FROM", environ)
            sender.sms_client = (SmsClient.from_connection_string(conn, **options) if conn
                                 else SmsClient(endpoint, _credential(), **options))
        return sender

    def send(self, channel: str, to: str, message: Message, instance_id: str) -> str:
        """Send on one channel; returns "sent" or "accepted" (email still being processed)."""
        if channel == "email":
            return self._email(to, message, instance_id)
        return self._sms(to, message.sms)

    def _email(self, to: str, message: Message, instance_id: str) -> str:
        body = {
            "senderAddress": self.email_sender,
            "recipients": {"to": [{"address": to}]},
            "content": {"subject": message.subject, "plainText": message.text, "html": message.html},
            "userEngagementTrackingDisabled": True,
        }
        # The operation is named after the instance, so a request the SDK resends names the same operation.
        operation = str(uuid.uuid5(uuid.NAMESPACE_URL, f"alma-export-pipeline:submitter:{instance_id}"))
        poller = self.email_client.begin_send(body, operation_id=operation, polling_interval=self.poll_interval)
        poller.wait(self.wait)
        if not poller.done():
            return "accepted"
        status = (poller.result() or {}).get("status")
        if status != "Succeeded":
            raise SendError(f"the email operation ended {status}")
        return "sent"

    def _sms(self, to: str, text: str) -> str:
        results = self.sms_client.send(from_=self.sms_from, to=[to], message=text)
        result = results[0]
        if not result.successful:
            raise SendError(f"the SMS was refused (HTTP {result.http_status_code})")
        return "sent"

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---- the job-end hook -----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _claim(ledger: Any, instance_id: str, uid: str, wanted: tuple[str, ...]) -> bool:
    """Take the one notification of this instance (False when someone already has)."""
    claimed = False

    def claim(record: Any) -> None:
        nonlocal claimed  # the update may run again after a conflict: the last run decides
        claimed = LEDGER_KEY not in record.info
        if claimed:
            record.info[LEDGER_KEY] = {"user": uid, "channels": list(wanted), "by": [], "outcome": "sending",
                                       "at": _now()}

    ledger.update(instance_id, claim)
    return claimed


def _problem(exc: BaseException) -> str:
    """An error in words without personal data: service errors can quote the recipient, so only
    the status and error code are kept."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(exc, ClientAuthenticationError):
        return f"Communication Services refused the credentials (HTTP {exc.status_code})"
    if isinstance(exc, HttpResponseError):
        code = getattr(getattr(exc, "error", None), "code", None)
        return f"Communication Services answered HTTP {exc.status_code}" + (f" {code}" if code else "")
    if isinstance(exc, (SendError, SettingError)):
        return str(exc)
    return type(exc).__name__


def _tell(record: Any, location: str | None, uid: str, wanted: tuple[str, ...], alma_factory: Callable[[], Any],
          sender_factory: Callable[..., Sender], environ: Mapping[str, str] | None) -> tuple[list[str], list[str]]:
    from pipeline.alma import AlmaError

    try:
        contact = lookup(uid, alma_factory)
    except AlmaError as exc:
        return [], [f"Alma API error {exc.code} looking the user up"]
    if contact is None:
        return [], ["the user is not known to Alma"]
    missing = {"email": "no preferred email address in Alma",
               "sms": ("the number marked for SMS in Alma has no country code" if contact.sms_not_international
                       else "no phone number marked preferred for SMS in Alma")}
    addresses = {"email": contact.email, "sms": contact.sms}
    usable = tuple(c for c in wanted if addresses[c])
    problems = [f"{c}: {missing[c]}" for c in wanted if not addresses[c]]
    if not usable:
        return [], problems
    message = build_message(record, location, environ)
    done = []
    try:
        sender = sender_factory(usable, environ)
    except Exception as exc:
        return [], problems + [_problem(exc)]
    try:
        for channel in usable:
            try:
                outcome = sender.send(channel, str(addresses[channel]), message, record.instance_id)
            except Exception as exc:
                problems.append(f"{channel}: {_problem(exc)}")
                continue
            done.append(channel)
            if outcome == "accepted":
                log.info("job instance %s: email to submitter %s accepted, still being processed",
                         record.instance_id, uid)
    finally:
        sender.close()
    return done, problems


def notify(ledger: Any, record: Any, location: str | None = None, *, alma_factory: Callable[[], Any],
           sender_factory: Callable[..., Sender] | None = None,
           environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Tell the submitter of a finished or failed job instance, once; never raises.

    Returns what the ledger now says (`user`, `by`, `outcome`), or None when nobody was to be told.
    """
    iid = getattr(record, "instance_id", "?")
    try:
        wanted = channels(environ)
        if not wanted or record.state not in ("done", "failed"):
            return None
        uid = submitter_id(record)
        if uid is None:
            log.info("job instance %s was submitted by %s, not a staff user: no submitter notification", iid,
                     (record.job.get("submitted_by_id") or record.job.get("submitted_by") or "nobody known"))
            return None
        if not _claim(ledger, iid, uid, wanted):
            log.info("job instance %s: submitter %s was already notified (or is being notified)", iid, uid)
            return None
    except Exception as exc:
        log.error("job instance %s: no submitter notification: %s", iid, _problem(exc))
        return None
    try:
        done, problems = _tell(record, location, uid, wanted, alma_factory,
                               sender_factory or Sender.from_settings, environ)
    except Exception as exc:  # an odd record or a bug must not fail the job either
        log.exception("job instance %s: submitter notification failed", iid)
        done, problems = [], [type(exc).__name__]
    outcome = ("notified by " + " and ".join(done)) if done else "not notified"
    if problems:
        outcome += "; " + "; ".join(problems)
    entry = {"user": uid, "channels": list(wanted), "by": done, "outcome": outcome, "at": _now()}
    (log.info if done and not problems else log.warning)("job instance %s: submitter %s %s", iid, uid, outcome)
    try:
        ledger.update(iid, lambda r: r.info.__setitem__(LEDGER_KEY, entry))
    except Exception as exc:
        log.error("job instance %s: could not record the submitter notification: %s", iid, exc)
    return entry


def preview(record: Any, location: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The email and the SMS the submitter would get, as text (the demo prints it; nothing is sent)."""
    m = build_message(record, location, environ)
    return "\n".join([
        "--- email (plain-text part) ---", f"Subject: {m.subject}", "", m.text.rstrip(),
        "--- email (HTML part) ---", m.html,
        f"--- SMS ({len(m.sms)} characters) ---", m.sms,
    ]) + "\n"
