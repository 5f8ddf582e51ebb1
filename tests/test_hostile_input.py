"""Hostile events and records (issue 12, findings 1, 2 and 8): a lone surrogate in a signed event,
MARC-in-JSON nested absurdly deep, and the challenge answer's escaping and headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from pathlib import Path

import pymarc
import pytest

from pipeline.destinations.local import LocalDestination
from pipeline.events import parse_queue_message
from pipeline.marc.engine import Input, process_file
from pipeline.webhook import handle
from tests import marcgen

SECRET = "surrogate-secret"
ENV = {"ALMA_WEBHOOK_SECRET": SECRET}
SAMPLE = json.loads((Path(__file__).resolve().parent.parent / "samples" / "events" / "job_end.json").read_text())


def signed_post(body: bytes):
    signature = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return handle("POST", {}, {"X-Exl-Signature": signature}, body, environ=ENV)


def with_text(path: list, text: str) -> bytes:
    """The sample with one value replaced by JSON text written by hand (json.dumps would refuse nothing,
    but this keeps the escape exactly as an attacker sends it)."""
    data = json.loads(json.dumps(SAMPLE))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@@HERE@@"
    return json.dumps(data).encode().replace(b'"@@HERE@@"', text.encode())


@pytest.mark.parametrize("path", [["job_instance", "name"], ["job_instance", "job_info", "name"],
                                  ["job_instance", "status", "desc"]])
def test_a_lone_surrogate_in_free_text_is_queued_with_a_replacement_character(path):
    result = signed_post(with_text(path, r'"Nightly \ud800 export"'))
    assert result.response.status == 202
    message = parse_queue_message(result.message)
    assert message.instance_id == SAMPLE["job_instance"]["id"]
    assert result.message.encode("utf-8")  # the queue message is valid UTF-8


@pytest.mark.parametrize("path", [["id"], ["job_instance", "id"], ["job_instance", "job_info", "id"],
                                  ["action"]])
def test_a_lone_surrogate_in_an_id_is_a_400_that_names_the_field(path):
    result = signed_post(with_text(path, r'"88\udfff"'))
    assert result.response.status == 400
    assert result.message is None
    assert ".".join(path) in result.response.body["error"] and "surrogate" in result.response.body["error"]


def test_a_lone_surrogate_in_a_counter_is_never_a_500():
    data = json.loads(json.dumps(SAMPLE))
    data["job_instance"]["counter"][0]["value"] = "@@V@@"
    body = json.dumps(data).encode().replace(b'"@@V@@"', rb'"\ud800\udc00\udbff"')  # one pair, one lone
    assert signed_post(body).response.status == 202


def test_the_challenge_answer_escapes_markup_and_forbids_sniffing():
    result = handle("GET", {"challenge": "</script><img src=x onerror=alert(1)>&amp;"}, {}, b"")
    text = result.response.text
    assert result.response.status == 200
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"challenge": "</script><img src=x onerror=alert(1)>&amp;"}
    assert result.response.headers["X-Content-Type-Options"] == "nosniff"
    assert signed_post(b"{}").response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_marc_json_line_nested_100000_deep_rejects_that_record_only(tmp_path):
    good = marcgen.records(6, seed=2)
    lines = [marcgen.json_line(r) for r in good]
    deep = b'{"leader": "00000nam a2200000 a 4500", "fields": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    data = b"".join(lines[:3]) + deep + b"".join(lines[3:])
    result = process_file(Input("deep.json", lambda: io.BytesIO(data), len(data)), LocalDestination(tmp_path),
                          fmt="marc21", workers=1)
    assert result.error is None
    assert (result.records_in, result.records_out, result.rejected) == (7, 6, 1)
    with open(tmp_path / "deep.mrc", "rb") as fh:  # pymarc, not our reader, says what was written
        ids = [r["001"].data for r in pymarc.MARCReader(fh)]
    assert ids == [r.control("001") for r in good]
    (entry,) = [json.loads(line) for line in (tmp_path / "deep.rejects.jsonl").read_text().splitlines()]
    assert entry["stage"] == "read" and "nested too deeply" in entry["error"]


# -- settings (finding 8) ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://api-eu.hosted.exlibrisgroup.com", "http://10.1.2.3:8080",
                                 "ftp://api-eu.hosted.exlibrisgroup.com", "//api-eu.hosted.exlibrisgroup.com"])
def test_alma_api_base_url_must_be_https(url):
    from pipeline.alma import base_url_from_settings
    from pipeline.settings import SettingError

    with pytest.raises(SettingError, match="ALMA_API_BASE_URL: must start with https://"):
        base_url_from_settings({"ALMA_API_BASE_URL": url})


@pytest.mark.parametrize("url", ["https://alma.example.edu/", "http://127.0.0.1:8123", "http://localhost:9",
                                 "http://[::1]:80"])
def test_alma_api_base_url_accepts_https_and_loopback_stand_ins(url):
    from pipeline.alma import base_url_from_settings

    assert base_url_from_settings({"ALMA_API_BASE_URL": url}) == url.rstrip("/")


def test_a_webhook_secret_with_edge_spaces_verifies_as_alma_signs_it():
    secret = "  profile secret with spaces  "
    body = json.dumps(SAMPLE).encode()
    signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    result = handle("POST", {}, {"X-Exl-Signature": signature}, body, environ={"ALMA_WEBHOOK_SECRET": secret})
    assert result.response.status == 202
    trimmed = base64.b64encode(hmac.new(secret.strip().encode(), body, hashlib.sha256).digest()).decode()
    result = handle("POST", {}, {"X-Exl-Signature": trimmed}, body, environ={"ALMA_WEBHOOK_SECRET": secret})
    assert result.response.status == 401
