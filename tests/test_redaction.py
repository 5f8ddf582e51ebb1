"""No secret at any log level (issue 12, finding 4): the redaction every log record goes through,
and a full job at DEBUG (signed webhook -> Azurite queues -> fake Alma -> real SFTP server -> fake
Dropbox with the real SDK -> notification receiver) after which every log line, ledger blob,
output, manifest, `_FAILED.json` and notification is searched for every secret."""

from __future__ import annotations

import json
import logging
import os
import secrets as random_tokens
import urllib.request
import uuid

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from pipeline import redact
from pipeline.ledger import CONTAINER
from tests import marcgen
from tests.e2e_support import send_webhook, worker_host
from tests.fake_alma import FakeAlma
from tests.fake_dropbox import FakeDropbox
from tests.sftp_server import SftpTestServer
from tests.test_notify import Receiver

JOB_ID = "S5139276810004146"
STEM = "BIBS_redact"


class Everything(logging.Handler):
    """Every record of every logger, formatted as a host would, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def debug_logs():
    handler = Everything()
    root = logging.getLogger()
    previous = root.level, {name: logging.getLogger(name).level for name in ("azure", "urllib3", "paramiko")}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in previous[1]:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous[0])
    for name, level in previous[1].items():
        logging.getLogger(name).setLevel(level)


# -- the filter itself -----------------------------------------------------------------------------------


def test_every_secret_setting_and_a_connection_strings_key_are_redacted():
    env = {"ALMA_API_KEY": "l8xx-abcdef123456", "AzureWebJobsStorage":
           "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3cr3tKeyBase64==;EndpointSuffix=x",
           "NOTIFY_URL": "https://hooks.example.com/services/T1/B2/tokenvalue?sig=abcdef", "ALMA_REGION": "eu12345"}
    found = redact.secret_values(env)
    assert found["l8xx-abcdef123456"] == "ALMA_API_KEY"
    assert found["S3cr3tKeyBase64=="] == "AzureWebJobsStorage"
    assert found["/services/T1/B2/tokenvalue?sig=abcdef"] == "NOTIFY_URL"
    assert "eu12345" not in found  # not a secret setting
    text = redact.redact_text("key S3cr3tKeyBase64== and POST /services/T1/B2/tokenvalue?sig=abcdef", found)
    assert text == "key [REDACTED AzureWebJobsStorage] and POST [REDACTED NOTIFY_URL]"


def test_urllib3_request_lines_to_the_receiver_lose_their_path(clean_env, debug_logs):
    """The finding: urllib3 logged `POST /services/.../hooks/<token>` at DEBUG."""
    receiver = Receiver()
    try:
        clean_env.setenv("NOTIFY_URL", receiver.url)
        requests.post(receiver.url, json={}, timeout=5)
        with urllib.request.urlopen(urllib.request.Request(receiver.url, data=b"{}", method="POST")) as answer:
            answer.read()
    finally:
        receiver.close()
    lines = [line for line in debug_logs.lines if "urllib3" in line]
    assert any('"POST /[REDACTED path] HTTP/1.1" 200' in line for line in lines), lines
    assert not [line for line in debug_logs.lines if "secret-token" in line]


def test_exception_text_is_redacted_too(clean_env, debug_logs):
    clean_env.setenv("ALMA_API_KEY", "l8xx-in-a-traceback-42")
    try:
        raise RuntimeError("the key l8xx-in-a-traceback-42 leaked into an error")
    except RuntimeError:
        logging.getLogger("pipeline.test").exception("failed with %s", os.environ["ALMA_API_KEY"])
    text = "\n".join(debug_logs.lines)
    assert "l8xx-in-a-traceback-42" not in text
    assert "failed with [REDACTED ALMA_API_KEY]" in text and "the key [REDACTED ALMA_API_KEY] leaked" in text


# -- a whole job at DEBUG ----------------------------------------------------------------------------------


@pytest.fixture
def job_world(tmp_path, clean_env, azurite):
    """Every service with secrets that look like nothing else, the settings set as an operator would."""
    export = tmp_path / "sftp"
    export.mkdir()
    marcgen.write_marcxml(export / f"{STEM}_1.xml", marcgen.records(40, seed=7), namespace=False)
    (export / f"{STEM}_2.xml").write_bytes(b"not MARC at all\n" * 5)  # fails every delivery: _FAILED.json
    token = random_tokens.token_hex(8)
    sftp = SftpTestServer(export, password=f"sftp-pw-{token}")
    sftp.start()
    alma = FakeAlma(api_key=f"l8xx-alma-{token}").__enter__()
    dropbox = FakeDropbox(app_secret=f"dbx-app-secret-{token}").start()
    dropbox.refresh_tokens = {f"dbx-refresh-{token}"}
    receiver = Receiver()
    env = {
        "ALMA_WEBHOOK_SECRET": f"whsec-{token}",
        "ALMA_API_BASE_URL": alma.url,
        "ALMA_API_KEY": alma.api_key,
        "DESTINATION": "dropbox:/Alma exports/{job_name}/{instance_id}",
        "NOTIFY_URL": receiver.url.replace("secret-token", f"notify-token-{token}"),
        **sftp.env("/"),
        **dropbox.environ(),
    }
    for key, value in env.items():
        clean_env.setenv(key, value)
    try:
        with worker_host(azurite.connection_string, dropbox.url, max_dequeue_count=2) as host:
            yield host, env, alma, dropbox, receiver, azurite
    finally:
        receiver.close()
        dropbox.stop()
        alma.__exit__(None, None, None)
        sftp.stop()


def test_a_full_job_at_debug_leaves_no_secret_anywhere(job_world, debug_logs):
    host, env, alma, dropbox, receiver, azurite = job_world
    instance_id = str(88000000000000000 + uuid.uuid4().int % 10**15)
    alma.add_instance(JOB_ID, instance_id, stem=STEM)
    send_webhook(host, instance_id, STEM, env["ALMA_WEBHOOK_SECRET"])
    invocations = host.drain(timeout=120)
    assert [i.outcome for i in invocations].count("poison") == 1  # the bad file failed for good

    # What there is to search: it must be there, or the search proves nothing.
    outputs = {path: dropbox.file(path).data for path in dropbox.paths()}
    assert any(p.endswith(f"{STEM}_2.xml_FAILED.json") for p in outputs)
    assert any(p.endswith("manifest.json") for p in outputs) and any(p.endswith(f"{STEM}_1.xml") for p in outputs)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    ledger = {b.name: service.get_blob_client(CONTAINER, b.name).download_blob().readall()
              for b in service.get_container_client(CONTAINER).list_blobs()}
    assert any(instance_id in name for name in ledger)
    notes = [json.dumps(b["json"]) for b in receiver.bodies]
    assert len(notes) == 1
    assert any("urllib3" in line for line in debug_logs.lines) and len(debug_logs.lines) > 50

    secrets = {name: env[name] for name in ("ALMA_WEBHOOK_SECRET", "ALMA_API_KEY", "EXPORT_SOURCE_PASSWORD",
                                            "DROPBOX_APP_SECRET", "DROPBOX_REFRESH_TOKEN")}
    secrets["NOTIFY_URL token"] = env["NOTIFY_URL"].rsplit("/", 1)[1]
    secrets["Azurite account key"] = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
    for n, access_token in enumerate(dropbox.access_tokens):
        secrets[f"Dropbox access token {n}"] = access_token
    places = {"log": "\n".join(debug_logs.lines), "notification": "\n".join(notes)}
    places.update({f"output {p}": data.decode("utf-8", "replace") for p, data in outputs.items()})
    places.update({f"ledger {n}": data.decode("utf-8", "replace") for n, data in ledger.items()})
    leaks = [(what, where) for what, value in secrets.items() for where, text in places.items() if value in text]
    assert leaks == []
    print(f"searched {len(debug_logs.lines)} log lines, {len(ledger)} ledger blobs, {len(outputs)} outputs and "
          f"{len(notes)} notification for {len(secrets)} secrets: no leak")
