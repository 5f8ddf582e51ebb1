"""Notifications against a real HTTP server on 127.0.0.1: success, errors, no server, a slow server."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import notify
from pipeline.ledger import FileState, JobRecord, ManifestState

SECRET_PATH = "/services/T000/B000/secret-token"


class Receiver:
    """A webhook receiver that records bodies and answers with `status` (or holds the answer)."""

    def __init__(self) -> None:
        self.status = 200
        self.answer: bytes | None = None
        self.headers: dict[str, str] = {}
        self.bodies: list[dict] = []
        self.hold = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append({"type": self.headers["Content-Type"],
                                        "json": json.loads(self.rfile.read(length))})
                if receiver.hold.is_set():
                    receiver.release.wait(30)
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if receiver.answer is not None:
                    self.wfile.write(receiver.answer)
                else:
                    self.wfile.write(b"ok" if receiver.status == 200 else b"invalid_payload")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def finished_record(state: str = "done") -> JobRecord:
    files = [
        FileState("BIBS_1.xml", state="done", result={"records_out": 40_000, "rejected": 2, "outputs": []}),
        FileState("BIBS_2.xml", state="done", result={"records_out": 8_213, "rejected": 1}),
    ]
    if state == "failed":
        files.append(FileState("BIBS_3.xml", state="failed", attempts=5, error="SFTP: No such file " + "x" * 500))
    return JobRecord(
        instance_id="8816243980004146", state=state,
        job={"job_id": "S5139276810004146", "job_name": "Export Bibliographic Records - Nightly",
             "submitted_by": {"value": "jsmith", "desc": "Jane Smith"}},
        files=files, manifest=ManifestState(state="done", location="dropbox:/Alma exports/Nightly/2026-11-20"),
        started_at="2026-11-20T03:13:00.000Z", finished_at="2026-11-20T03:20:00.000Z",
    )


def test_a_finished_job_posts_one_summary_slack_and_teams_can_show(receiver, clean_env):
    clean_env.setenv("NOTIFY_URL", receiver.url)
    assert notify.send(finished_record()) is True
    assert len(receiver.bodies) == 1
    sent = receiver.bodies[0]
    assert sent["type"] == "application/json"
    body = sent["json"]
    text = body["text"]
    assert 'Alma export "Export Bibliographic Records - Nightly" finished' in text
    assert "48,213 records out, 3 rejected, 2/2 files" in text and "submitted by Jane Smith" in text
    assert "Files: dropbox:/Alma exports/Nightly/2026-11-20" in text
    assert body["@type"] == "MessageCard" and body["summary"] and body["themeColor"] == "2EB886"
    facts = {f["name"]: f["value"] for f in body["sections"][0]["facts"]}
    assert facts["Records out"] == "48,213" and facts["Submitted by"] == "Jane Smith"
    assert body["pipeline"]["records_out"] == 48_213 and body["pipeline"]["rejected"] == 3
    assert body["pipeline"]["files_failed"] == [] and body["pipeline"]["instance_id"] == "8816243980004146"


def test_a_failed_job_says_what_failed_and_how_to_rerun(receiver):
    assert notify.send(finished_record("failed"), "dropbox:/elsewhere", url=receiver.url) is True
    body = receiver.bodies[0]["json"]
    assert "FAILED" in body["text"] and "Failed: BIBS_3.xml: SFTP: No such file" in body["text"]
    assert "python -m pipeline requeue 8816243980004146" in body["text"]
    assert "Files: dropbox:/elsewhere" in body["text"] and body["themeColor"] == "D63333"
    assert len(body["pipeline"]["files_failed"][0]["error"]) == notify.MAX_ERROR_CHARS


def test_a_receiver_error_is_logged_without_the_secret_url(receiver, caplog):
    receiver.status = 500
    with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
        assert notify.send(finished_record(), url=receiver.url) is False
    assert len(receiver.bodies) == 1
    assert '127.0.0.1 answered 500 "invalid_payload"' in caplog.text
    assert "secret-token" not in caplog.text


def test_no_server_is_logged_and_not_raised(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
        assert notify.send(finished_record(), url=f"http://127.0.0.1:{port}{SECRET_PATH}") is False
    assert "failed: ConnectionError" in caplog.text and "secret-token" not in caplog.text


def test_a_slow_receiver_times_out_and_the_job_goes_on(receiver, caplog):
    receiver.hold.set()  # the receiver answers only when released, after send() gave up
    with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
        assert notify.send(finished_record(), url=receiver.url, timeout=0.2) is False
    receiver.release.set()
    assert len(receiver.bodies) == 1 and "ReadTimeout" in caplog.text


def test_unset_or_unusable_urls_never_raise(clean_env, caplog):
    assert notify.send(finished_record()) is False  # NOTIFY_URL unset: silently nothing
    with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
        assert notify.send(finished_record(), url="not a url") is False
        assert notify.send(finished_record(), url="ftp://127.0.0.1/x") is False
    assert caplog.text.count("not sent: setting NOTIFY_URL: must start with https://") == 2
    assert notify.send(None, url="http://127.0.0.1:9/x") is False  # even a caller's bug is only logged
    odd = finished_record()
    odd.files[0].result = {"records_out": "many"}  # ignored by totals, still a message
    odd.job = {"name": None, "submitted_by": None}
    text = notify.payload(odd)["text"]
    assert 'Alma export "8816243980004146" finished: 8,213 records out' in text and "submitted by unknown" in text


# -- the receiver is not trusted (issue 12, finding 7) -------------------------------------------------


def test_a_redirect_is_not_followed_so_the_summary_never_reaches_another_address(caplog):
    first, elsewhere = Receiver(), Receiver()
    try:
        first.status = 307
        first.headers = {"Location": elsewhere.url}
        with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
            assert notify.send(finished_record(), url=first.url) is False
        assert len(first.bodies) == 1
        assert elsewhere.bodies == []  # requests would have re-POSTed the body here
        assert "redirected (not followed) 307" in caplog.text
    finally:
        first.close()
        elsewhere.close()


@pytest.mark.parametrize("url", ["http://hooks.example.com/services/T/B/secret-token",
                                 "http://10.0.0.5/services/secret-token", "http://[::ffff:10.0.0.1]/secret-token"])
def test_plain_http_is_refused_except_to_a_loopback_address(url, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
        assert notify.send(finished_record(), url=url) is False
    assert "must start with https://" in caplog.text and "secret-token" not in caplog.text


def test_receiver_text_is_escaped_and_truncated_in_the_log(receiver, caplog):
    receiver.status = 400
    receiver.answer = b"bad\nWARNING forged line\r\n\x1b[31m" + b"x" * 5000
    with caplog.at_level(logging.WARNING, logger="pipeline.notify"):
        assert notify.send(finished_record(), url=receiver.url) is False
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pipeline.notify"]
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\\nWARNING forged line" in line  # still readable, as an escape
    assert len(line) < 400


def test_the_url_setting_is_checked_when_sent(receiver, clean_env, caplog):
    clean_env.setenv("NOTIFY_URL", receiver.url + "  ")
    assert notify.send(finished_record()) is True  # loopback http, trimmed
    clean_env.setenv("NOTIFY_URL", "http://hooks.example.com/x")
    assert notify.send(finished_record()) is False
