"""A fake Alma REST API on 127.0.0.1 that follows the documented wire formats.

Reusable as a fixture: `alma = FakeAlma(); url = alma.start(); alma.add_instance(...); ...; alma.stop()`
(or `with FakeAlma() as alma:`). It serves `GET /almaws/v1/conf/jobs/{job}/instances/{id}` with
the real instance shape (string counters, `progress` 101.3, `link` naming job `M0`) and
`GET /almaws/v1/users/{primary_id}` with the real user shape (`contact_info` with `email` and `phone`
lists, `preferred` and `preferred_sms` flags; an unknown user is Alma's 400 with error 401861), checks the
`Authorization: apikey ...` header, sends `x-exl-api-remaining`, and can be told to misbehave for
the next N calls: `alma.fail_next("per_second", 2)`. Every request is recorded in `alma.calls`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

INSTANCE_PATH = "/almaws/v1/conf/jobs/"
USERS_PATH = "/almaws/v1/users/"

_XML_ERROR = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<web_service_result xmlns="http://com/exlibris/urm/general/xmlbeans">'
    "<errorsExist>true</errorsExist><errorList><error><errorCode>{code}</errorCode>"
    "<errorMessage>{message}</errorMessage><trackingId>E01-{n}</trackingId></error></errorList>"
    "</web_service_result>"
)


def error_body(code: str, message: str, shape: str = "json", n: int = 1) -> tuple[bytes, str]:
    """An Alma error body in one of the three shapes: `json` (errorList), `json_wsr`, `xml`."""
    error = {"errorCode": code, "errorMessage": message, "trackingId": f"E01-{n}"}
    if shape == "xml":
        return _XML_ERROR.format(code=code, message=message, n=n).encode(), "application/xml;charset=UTF-8"
    if shape == "json_wsr":
        body = {"web_service_result": {"errorsExist": True, "errorList": {"error": error}}}
    else:
        body = {"errorsExist": True, "errorList": {"error": [error]}, "result": None}
    return json.dumps(body).encode(), "application/json;charset=UTF-8"


# name -> (HTTP status, error code, message, body shape); "slow" and "drop" are handled specially.
FAULTS: dict[str, tuple[int, str, str, str]] = {
    "per_second": (429, "PER_SECOND_THRESHOLD", "HTTP requests are more than allowed per second", "xml"),
    "daily": (429, "DAILY_THRESHOLD", "Daily API Request Threshold has been reached", "json"),
    "server_error": (500, "GENERAL_ERROR", "A general error has occurred", "json_wsr"),
    "unavailable": (503, "", "", "none"),
    "unauthorized": (401, "UNAUTHORIZED", "API-key not defined or not configured to allow this API.", "xml"),
    "forbidden": (403, "FORBIDDEN", "Forbidden", "json"),
    "bad_request": (400, "INVALID_REQUEST", "Invalid request", "json_wsr"),
    "not_found": (404, "NOT_FOUND", "The requested resource was not found.", "json"),
}


def make_instance(job_id: str, instance_id: str, *, stem: str | None = None, status: str = "COMPLETED_SUCCESS",
                  name: str = "Export Bibliographic Records - Nightly discovery export",
                  exported: int = 3, counters: dict[str, str] | None = None,
                  progress: float = 101.3) -> dict[str, Any]:
    """A job instance in the shape the API returns (counter values are strings, `link` says M0)."""
    desc = {"COMPLETED_SUCCESS": "Completed Successfully", "COMPLETED_WARNING": "Completed with Warnings",
            "COMPLETED_FAILED": "Completed with errors", "RUNNING": "Running", "FAILED": "Failed"}
    counter_list = []
    if stem is not None:
        counter_list.append({"type": {"value": "c.jobs.bibExport.link", "desc": "File name"}, "value": stem})
    counter_list += [
        {"type": {"value": "c.jobs.bibExport.exported", "desc": "Records exported"}, "value": str(exported)},
        {"type": {"value": "c.jobs.bibExport.failed", "desc": "Records failed"}, "value": "0"},
    ]
    for key, value in (counters or {}).items():
        counter_list.append({"type": {"value": key, "desc": key}, "value": str(value)})
    return {
        "id": instance_id,
        "external_id": "",
        "name": f"{name} - 11/20/2026 03:05",
        "submitted_by": {"value": "System", "desc": "System"},
        "submit_time": "2026-11-20T03:05:00.402Z",
        "start_time": "2026-11-20T03:05:11.093Z",
        "end_time": "2026-11-20T03:12:44.870Z" if status not in ("RUNNING", "QUEUED", "PENDING") else None,
        "progress": progress,
        "status": {"value": status, "desc": desc.get(status, status.title())},
        "status_date": "2026-11-20Z",
        "alerts": {"alert": []},
        "counter": counter_list,
        "job_info": {
            "id": job_id,
            "name": "Export Bibliographic Records",
            "description": "Export bibliographic records of a set to an FTP location",
            "type": {"value": "SCHEDULED", "desc": "Scheduled"},
            "category": {"value": "EXPORT", "desc": "Export"},
            "link": f"/almaws/v1/conf/jobs/{job_id}",
        },
        "link": f"/almaws/v1/conf/jobs/M0/instances/{instance_id}",  # the quirk seen in real traffic
    }


def make_user(primary_id: str, *, email: str | None = None, sms: str | None = None,
              other_phone: str | None = "+1 617 555 0100", other_email: str | None = None,
              first_name: str = "Jane", last_name: str = "Smith") -> dict[str, Any]:
    """A staff user as `GET /almaws/v1/users/{id}` returns it (JSON, view=full, expand=none).

    `email` is the preferred address and `sms` the phone marked preferred for SMS; `other_phone`
    (the preferred phone, not for SMS) and `other_email` (not preferred) are there to be ignored.
    """
    emails = []
    if other_email:
        emails.append({"email_address": other_email, "description": None, "preferred": False,
                       "segment_type": "Internal", "email_type": [{"value": "personal", "desc": "Personal"}]})
    if email:
        emails.append({"email_address": email, "description": None, "preferred": True,
                       "segment_type": "Internal", "email_type": [{"value": "work", "desc": "Work"}]})
    phones = []
    if other_phone:
        phones.append({"phone_number": other_phone, "preferred": True, "preferred_sms": False,
                       "segment_type": "Internal", "phone_type": [{"value": "office", "desc": "Office"}]})
    if sms:
        phones.append({"phone_number": sms, "preferred": False, "preferred_sms": True,
                       "segment_type": "Internal", "phone_type": [{"value": "mobile", "desc": "Mobile"}]})
    return {
        "record_type": {"value": "STAFF", "desc": "Staff"},
        "primary_id": primary_id,
        "first_name": first_name, "middle_name": "", "last_name": last_name,
        "full_name": f"{first_name} {last_name}",
        "user_title": {"value": "", "desc": ""},
        "job_category": {"value": "Cataloger", "desc": "Cataloger"},
        "user_group": {"value": "STAFF", "desc": "Staff"},
        "campus_code": {"value": "MAIN", "desc": "Main campus"},
        "preferred_language": {"value": "en", "desc": "English"},
        "account_type": {"value": "INTERNAL", "desc": "Internal"},
        "external_id": "",
        "status": {"value": "ACTIVE", "desc": "Active"},
        "contact_info": {"address": [], "email": emails, "phone": phones},
        "user_identifier": [],
        "user_role": [{"status": {"value": "ACTIVE", "desc": "Active"},
                       "scope": {"value": "01MAIN_INST", "desc": "Main library"},
                       "role_type": {"value": "214", "desc": "Cataloger"}, "parameter": []}],
        "user_block": [], "user_note": [], "user_statistic": [], "proxy_for_user": [],
        "link": f"https://api-eu.hosted.exlibrisgroup.com/almaws/v1/users/{primary_id}",
    }


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    status: int


class FakeAlma:
    def __init__(self, api_key: str = "test-api-key", remaining: int = 100000, slow_seconds: float = 3.0) -> None:
        self.api_key = api_key
        self.remaining = remaining
        self.slow_seconds = slow_seconds
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self._faults: list[str] = []
        self._user_faults: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- control ----------------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on a free 127.0.0.1 port; returns the base URL (for ALMA_API_BASE_URL)."""
        fake = self

        class Handler(_Handler):
            alma = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-alma", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeAlma:
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_instance(self, job_id: str, instance_id: str, **kwargs: Any) -> dict[str, Any]:
        """Serve an instance (built by `make_instance` from kwargs, or pass `data=` ready-made)."""
        data = kwargs.pop("data", None) or make_instance(job_id, instance_id, **kwargs)
        with self._lock:
            self.instances[(job_id, instance_id)] = data
        return data

    def add_user(self, primary_id: str, **kwargs: Any) -> dict[str, Any]:
        """Serve a user (built by `make_user` from kwargs, or pass `data=` ready-made)."""
        data = kwargs.pop("data", None) or make_user(primary_id, **kwargs)
        with self._lock:
            self.users[primary_id] = data
        return data

    def user_calls(self) -> int:
        return sum(1 for c in self.calls if c.path.startswith(USERS_PATH))

    def fail_next(self, fault: str, times: int = 1) -> None:
        """Answer the next `times` requests with a fault from FAULTS, or "slow" (sleeps past timeouts)."""
        if fault not in FAULTS and fault != "slow":
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._faults.extend([fault] * times)

    def fail_users_next(self, fault: str, times: int = 1) -> None:
        """Like `fail_next`, for the next `times` users calls only (job instance calls answer normally)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._user_faults.extend([fault] * times)

    def instance_calls(self) -> int:
        return sum(1 for c in self.calls if c.path.startswith(INSTANCE_PATH))

    def _next_fault(self, path: str = "") -> str | None:
        with self._lock:
            if path.startswith(USERS_PATH) and self._user_faults:
                return self._user_faults.pop(0)
            return self._faults.pop(0) if self._faults else None


class _Handler(BaseHTTPRequestHandler):
    alma: FakeAlma
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        alma = self.alma
        self.alma.calls.append(Call("GET", self.path, dict(self.headers.items()), status))
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            with alma._lock:
                if status != 429 or "DAILY" not in body.decode(errors="replace"):
                    alma.remaining = max(0, alma.remaining - 1)
                self.send_header("x-exl-api-remaining", str(alma.remaining))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def _error(self, status: int, code: str, message: str, shape: str) -> None:
        if shape == "none":
            self._send(status, b"<html><body>Service Unavailable</body></html>", "text/html")
            return
        body, ctype = error_body(code, message, shape, n=len(self.alma.calls))
        self._send(status, body, ctype)

    def do_GET(self) -> None:
        alma = self.alma
        fault = alma._next_fault(self.path)
        if fault == "slow":
            time.sleep(alma.slow_seconds)
            fault = None
        if fault:
            status, code, message, shape = FAULTS[fault]
            self._error(status, code, message, shape)
            return
        if self.headers.get("Authorization") != f"apikey {alma.api_key}":
            self._error(401, "UNAUTHORIZED", "API-key not defined or not configured to allow this API.", "xml")
            return
        path = self.path.split("?", 1)[0]
        if path.startswith(USERS_PATH):
            user_id = unquote(path[len(USERS_PATH):])
            user = alma.users.get(user_id)
            if user is None:
                self._error(400, "401861", f"User with identifier {user_id} of type all_unique was not found.",
                            "json")
                return
            self._send(200, json.dumps(user).encode(), "application/json;charset=UTF-8")
            return
        parts = path[len(INSTANCE_PATH):].split("/") if path.startswith(INSTANCE_PATH) else []
        if len(parts) == 3 and parts[1] == "instances":
            data = alma.instances.get((parts[0], parts[2]))
            if data is None:
                self._error(400, "402218", f"Invalid job instance ID: {parts[2]}.", "json_wsr")
                return
            self._send(200, json.dumps(data).encode(), "application/json;charset=UTF-8")
            return
        self._error(400, "ROUTING_ERROR", "No matching route for this request.", "json")
