"""A stand-in for the Azure Communication Services email and SMS REST endpoints, over TLS on 127.0.0.1.

It checks every request the way the service does: `x-ms-content-sha256` must be the Base64 SHA-256
of the body as received, `x-ms-date` recent, and `Authorization: HMAC-SHA256 SignedHeaders=...&
Signature=...` the Base64 HMAC-SHA256, keyed with the Base64-decoded access key, of
"VERB\\nPATH?QUERY\\n" followed by the signed headers' values joined by ";". A wrong signature is
401 (`Denied`). It answers as documented: email `POST /emails:send` 202 with an `Operation-Location`
to poll (`GET /emails/operations/{id}`: Running, then Succeeded); SMS `POST /sms` 202 with one result
per recipient (a number not in E.164 form is that recipient's 400); and, when told to, 429 with
`Retry-After`. The certificate is made at start-up: point the SDKs at `ca_file` (REQUESTS_CA_BUNDLE).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.ftp_server import make_self_signed

ACCESS_KEY = base64.b64encode(b"fake-acs-access-key-for-tests-0123456789").decode()  # as a connection string has it
MAX_SKEW_SECONDS = 15 * 60  # the service refuses requests dated further from its clock
_AUTH = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<headers>[^&]+)&Signature=(?P<signature>.+)$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    status: int


@dataclass
class Sent:
    """What the service accepted: one email or one SMS."""

    channel: str
    to: list[str]
    body: dict[str, Any] = field(repr=False)


class FakeACS:
    def __init__(self, access_key: str = ACCESS_KEY) -> None:
        self.access_key = access_key
        self.requests: list[Request] = []
        self.sent: list[Sent] = []
        self.operations: dict[str, dict[str, Any]] = {}
        self.polls_until_done = 1  # polls that still answer Running
        self.email_final_status = "Succeeded"
        self._faults: list[tuple[int, str]] = []  # (status, Retry-After) for the next requests
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="fake-acs-")
        self.ca_file = ""
        self.url = ""
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        cert, key = make_self_signed(Path(self._dir.name))
        self.ca_file = str(cert)
        fake = self

        class Handler(_Handler):
            acs = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-acs",
                         daemon=True).start()
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        return self.url

    def connection_string(self, access_key: str | None = None) -> str:
        return f"endpoint={self.url}/;accesskey={access_key or self.access_key}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._dir.cleanup()

    def __enter__(self) -> FakeACS:
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def throttle_next(self, times: int = 1, retry_after: str = "1") -> None:
        """Answer the next `times` signed requests 429 Too Many Requests with this Retry-After."""
        with self._lock:
            self._faults.extend([(429, retry_after)] * times)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.sent.clear()
            self.operations.clear()
            self._faults.clear()
        self.polls_until_done = 1
        self.email_final_status = "Succeeded"

    def statuses(self) -> list[tuple[str, str, int]]:
        return [(r.method, r.path.split("?")[0], r.status) for r in self.requests]

    # -- the service's checks -------------------------------------------------------------------------

    def check_signature(self, method: str, path: str, headers: dict[str, str], body: bytes) -> str | None:
        """None when the request is signed as the service requires, else what is wrong."""
        lower = {k.lower(): v for k, v in headers.items()}
        for name in ("x-ms-date", "x-ms-content-sha256", "authorization", "host"):
            if name not in lower:
                return f"header {name} is missing"
        if lower["x-ms-content-sha256"] != base64.b64encode(hashlib.sha256(body).digest()).decode():
            return "x-ms-content-sha256 does not match the body"
        try:
            sent_at = parsedate_to_datetime(lower["x-ms-date"])
        except (TypeError, ValueError):
            return "x-ms-date is not an HTTP date"
        if abs((datetime.now(UTC) - sent_at).total_seconds()) > MAX_SKEW_SECONDS:
            return "x-ms-date is too far from now"
        match = _AUTH.match(lower["authorization"])
        if not match:
            return "Authorization is not HMAC-SHA256 SignedHeaders=...&Signature=..."
        signed = match["headers"].lower().split(";")
        if not {"x-ms-date", "host", "x-ms-content-sha256"} <= set(signed):
            return "SignedHeaders lacks x-ms-date, host or x-ms-content-sha256"
        if any(h not in lower for h in signed):
            return "a signed header is missing"
        string_to_sign = f"{method}\n{path}\n" + ";".join(lower[h] for h in signed)
        expected = base64.b64encode(hmac.new(base64.b64decode(self.access_key), string_to_sign.encode(),
                                             hashlib.sha256).digest()).decode()
        return None if hmac.compare_digest(expected, match["signature"]) else "the signature does not match"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    acs: FakeACS
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any] | None, parsed: dict[str, Any] | None,
                headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode() if body is not None else b""
        self.acs.requests.append(Request(self.command, self.path, dict(self.headers.items()), parsed, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self) -> None:
        acs = self.acs
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            self._answer(400, _error("BadRequest", "The body is not JSON."), None)
            return
        problem = acs.check_signature(self.command, self.path, dict(self.headers.items()), raw)
        if problem:
            self._answer(401, _error("Denied", f"Denied by the resource provider. ({problem})"), parsed)
            return
        with acs._lock:
            fault = acs._faults.pop(0) if acs._faults else None
        if fault:
            self._answer(fault[0], _error("TooManyRequests", "The request was throttled."), parsed,
                         {"Retry-After": fault[1]})
            return
        path = urlsplit(self.path).path
        if self.command == "POST" and path == "/emails:send":
            self._email(parsed or {})
        elif self.command == "GET" and path.startswith("/emails/operations/"):
            self._poll(path.rsplit("/", 1)[-1])
        elif self.command == "POST" and path == "/sms":
            self._sms(parsed or {})
        else:
            self._answer(404, _error("NotFound", "No such resource."), parsed)

    do_GET = do_POST = _handle

    def _email(self, body: dict[str, Any]) -> None:
        acs = self.acs
        to = [r.get("address") for r in (body.get("recipients") or {}).get("to") or []]
        content = body.get("content") or {}
        if not body.get("senderAddress") or not to or not content.get("subject") or not (
                content.get("plainText") or content.get("html")):
            self._answer(400, _error("BadRequest", "senderAddress, recipients.to and content are required."), body)
            return
        op = self.headers.get("Operation-Id") or str(uuid.uuid4())
        with acs._lock:
            first = op not in acs.operations
            if first:  # a resent operation id is the same operation: one email
                acs.operations[op] = {"polls": 0}
                acs.sent.append(Sent("email", to, body))
        location = f"{acs.url}/emails/operations/{op}?api-version=2025-09-01"
        self._answer(202, {"id": op, "status": "Running", "error": None}, body, {"Operation-Location": location})

    def _poll(self, op: str) -> None:
        acs = self.acs
        with acs._lock:
            state = acs.operations.get(op)
            if state is not None:
                state["polls"] += 1
        if state is None:
            self._answer(404, _error("NotFound", f"Operation {op} was not found."), None)
            return
        done = state["polls"] > acs.polls_until_done
        status = acs.email_final_status if done else "Running"
        error = _error("EmailDroppedAllRecipientsSuppressed", "Message was dropped.")["error"] \
            if status == "Failed" else None
        self._answer(200, {"id": op, "status": status, "error": error}, None)

    def _sms(self, body: dict[str, Any]) -> None:
        acs = self.acs
        recipients = body.get("smsRecipients") or []
        if not body.get("from") or not recipients or "message" not in body:
            self._answer(400, _error("BadRequest", "from, smsRecipients and message are required."), body)
            return
        results = []
        for r in recipients:
            ok = bool(_E164.match(str(r.get("to") or "")))
            results.append({"to": r.get("to"), "messageId": f"Outgoing_{uuid.uuid4().hex}_noam" if ok else None,
                            "httpStatusCode": 202 if ok else 400, "repeatabilityResult": "accepted",
                            "successful": ok, "errorMessage": None if ok else "Invalid To phone number format."})
            if ok:
                acs.sent.append(Sent("sms", [r["to"]], body))
        self._answer(202, {"value": results}, body)
