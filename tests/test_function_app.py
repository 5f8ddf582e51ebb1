"""The Azure function itself, called the way the host calls it: `func.HttpRequest` in, an output
binding object with `.set()`, `func.HttpResponse` out. Plus the `demo` command that drives it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

from pipeline.cli import main
from pipeline.dev.host import host_messages, registered_functions, user_function
from pipeline.events import parse_queue_message

ROOT = Path(__file__).resolve().parent.parent
SECRET = "function-level-secret"
JSON_BODY = (ROOT / "samples" / "events" / "job_end.json").read_bytes()
XML_BODY = (ROOT / "samples" / "events" / "job_end.xml").read_bytes()


class Out:
    """An output binding as the host passes it: the function calls `.set()`."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def set(self, value: bytes) -> None:
        self.calls.append(value)


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def call(method: str = "POST", body: bytes = b"", params=None, headers=None):
    request = func.HttpRequest(method=method, url="https://example.azurewebsites.net/api/webhook",
                               params={"code": "function-key", **(params or {})}, headers=headers or {}, body=body)
    out = Out()
    response = user_function("alma_webhook")(request, out)
    return response, out


@pytest.fixture
def env(clean_env):
    clean_env.setenv("ALMA_WEBHOOK_SECRET", SECRET)
    return clean_env


def test_binding_metadata_is_what_alma_and_the_host_need():
    function = registered_functions()["alma_webhook"]
    bindings = {b["name"]: b for b in json.loads(function.get_function_json())["bindings"]}
    assert bindings["req"] == {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": ["GET", "POST"],
                               "authLevel": "FUNCTION", "route": "webhook"}
    assert bindings["msg"] == {"direction": "OUT", "type": "queue", "name": "msg", "queueName": "alma-export-jobs",
                               "connection": "AzureWebJobsStorage"}
    assert bindings["$return"]["type"] == "http"


def test_function_app_imports_and_indexes_without_any_setting():
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    code = "import function_app; print(sorted(f.get_function_name() for f in function_app.app.get_functions()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "alma_webhook" in out.stdout


def test_signed_json_event_is_queued(env):
    headers = {"Content-Type": "application/json", "X-Exl-Signature": sign(JSON_BODY)}
    response, out = call(body=JSON_BODY, headers=headers)
    assert response.status_code == 202
    assert response.mimetype == "application/json"
    assert json.loads(response.get_body()) == {"status": "queued", "event_id": "8816243990004146"}
    (message,) = out.calls
    queued = parse_queue_message(message)
    assert queued.job_id == "S5139276810004146" and queued.instance_id == "8816243980004146"


def test_signed_xml_event_is_queued_with_a_lower_case_header(env):
    response, out = call(body=XML_BODY, headers={"content-type": "application/xml", "x-exl-signature": sign(XML_BODY)})
    assert response.status_code == 202 and len(out.calls) == 1


def test_challenge(env):
    response, out = call("GET", params={"challenge": 'a"b'})
    assert response.status_code == 200 and out.calls == []
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.get_body()) == {"challenge": 'a"b'}


@pytest.mark.parametrize(("body", "headers", "status"), [
    (JSON_BODY, {}, 401),
    (JSON_BODY, {"X-Exl-Signature": sign(JSON_BODY, "other")}, 401),
    (b"{}", {"X-Exl-Signature": sign(b"{}")}, 400),
    (b"x" * (1024 * 1024 + 1), {}, 413),
])
def test_rejections_queue_nothing(env, body, headers, status):
    response, out = call(body=body, headers=headers)
    assert response.status_code == status and out.calls == []
    assert "error" in json.loads(response.get_body())


def test_unconfigured_secret_is_503_and_queues_nothing(clean_env):
    response, out = call(body=JSON_BODY, headers={"X-Exl-Signature": sign(JSON_BODY)})
    assert response.status_code == 503 and out.calls == []
    assert "ALMA_WEBHOOK_SECRET" in json.loads(response.get_body())["error"]


def test_queued_message_travels_through_a_real_queue(env, azurite, unique_name):
    """The host base64-encodes output-binding messages (host.json messageEncoding) and enqueues a bytes
    output as written; do the same into Azurite and read it back as the worker's trigger would."""
    from azure.storage.queue import BinaryBase64DecodePolicy, BinaryBase64EncodePolicy

    _, out = call(body=JSON_BODY, headers={"X-Exl-Signature": sign(JSON_BODY)})
    (wire,) = host_messages(out.calls[0])
    assert wire == out.calls[0]  # bytes: what the webhook wrote is exactly what is queued
    queue = QueueClient.from_connection_string(azurite.connection_string, unique_name,
                                               message_encode_policy=BinaryBase64EncodePolicy(),
                                               message_decode_policy=BinaryBase64DecodePolicy())
    queue.create_queue()
    queue.send_message(wire)
    (received,) = list(queue.receive_messages())
    assert received.content == out.calls[0]
    assert parse_queue_message(received.content) == parse_queue_message(out.calls[0])


def test_the_host_would_rewrite_the_job_message_if_it_were_a_str(env):
    """Why the webhook's output is bytes: a JSON-looking `str` is re-parsed and re-serialised by the
    host's Json.NET (host#9581): indented, and a time with milliseconds loses its trailing zeros."""
    _, out = call(body=JSON_BODY, headers={"X-Exl-Signature": sign(JSON_BODY)})
    text = out.calls[0].decode("utf-8")
    (rewritten,) = host_messages(text)
    assert rewritten != out.calls[0] and rewritten.startswith(b"{\n  ")
    assert json.loads(text)["end_time"] == "2026-11-20T03:12:44.870Z"
    assert json.loads(rewritten)["end_time"] == "2026-11-20T03:12:44.87Z"
    assert host_messages("[" + text + "," + text + "]") == [rewritten, rewritten]  # python-worker#1492: split


@pytest.mark.parametrize("args", [["demo", "--webhook-only"], ["demo", "--webhook-only", "--xml"]])
def test_demo_webhook_only_prints_the_answer_and_the_message(clean_env, capsys, args):
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "HTTP 202 application/json" in printed
    assert '"job_id": "S5139276810004146"' in printed
    assert os.environ.get("ALMA_WEBHOOK_SECRET") is None  # the demo secret does not leak out


def test_demo_runs_the_whole_flow_into_the_out_folder(clean_env, capsys, tmp_path):
    """`make demo`: webhook -> Azurite queue -> plan_export -> process_export_file -> outputs + manifest."""
    from pipeline.destinations.base import StreamHasher

    assert main(["demo", "--xml", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "HTTP 202 application/json" in printed and "job instance 8816243980004146: done" in printed
    folder = tmp_path / "Export Bibliographic Records" / "2026-11-20" / "8816243980004146"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["state"] == "done"
    assert [f["name"] for f in manifest["files"]] == [
        "BIBS_nightly_8816243980004146_1.xml", "BIBS_nightly_8816243980004146_2.xml"]
    for f in manifest["files"]:
        (output,) = [o for o in f["outputs"] if o["kind"] == "records"]
        data = Path(output["path"]).read_bytes()
        assert output["sha256"] == StreamHasher.of(data).sha256 and data.startswith(b"<?xml")
    assert manifest["totals"]["records_in"] == 100
    assert os.environ.get("ALMA_WEBHOOK_SECRET") is None
    # What the submitter would be sent (the sample was run by System, so nobody is).
    assert "submitted by System, not a staff user, so nobody is told" in printed
    assert '    | Subject: Alma export "Export Bibliographic Records" finished' in printed
    assert f"    | Where: {folder}" in printed and "    | --- SMS (" in printed
    # It ends with the run's status page and the instance page beside it, linked to each other.
    assert f"status page: {tmp_path / 'status.html'}" in printed
    listing = (tmp_path / "status.html").read_text()
    instance = (tmp_path / "status-8816243980004146.html").read_text()
    assert 'href="status-8816243980004146.html"' in listing and ">done<" in listing and ">100<" in listing
    assert 'href="status.html"' in instance and "BIBS_nightly_8816243980004146_2.xml" in instance
    assert manifest["files"][1]["outputs"][0]["sha256"] in instance


def test_demo_with_an_ignored_event_exits_1(clean_env, capsys, tmp_path):
    data = json.loads(JSON_BODY)
    data["job_instance"]["status"] = {"value": "FAILED"}
    path = tmp_path / "failed.json"
    path.write_text(json.dumps(data))
    assert main(["demo", "--event", str(path), "--out", str(tmp_path)]) == 1
    assert '"status": "ignored"' in capsys.readouterr().out


def test_every_function_has_annotations_the_python_worker_can_bind():
    """The worker resolves parameter annotations with typing.get_type_hints and checks `func.Out[...]`
    arguments; PEP 585 `list[str]` inside Out is not recognised by older workers."""
    import typing

    import azure.functions as func

    from pipeline.dev.host import registered_functions

    outputs = []
    for name, fn in registered_functions().items():
        hints = typing.get_type_hints(fn.get_user_function())
        for param, hint in hints.items():
            if typing.get_origin(hint) is func.Out:
                (arg,) = typing.get_args(hint)
                assert arg is bytes or arg == typing.List[str], (name, param, hint)  # noqa: UP006
                outputs.append(param)
    assert sorted(outputs) == ["files", "files", "more", "msg"]  # every output binding was checked
