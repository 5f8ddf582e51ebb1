"""The webhook listener's logic: challenge, signature, body limits, parsing errors, dispatch, logging.

Signatures are computed here with hmac/base64 directly (and one vector with openssl), never with
the code under test.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.events import EXPORT_LINK_COUNTER, parse_queue_message
from pipeline.webhook import HANDLERS, MAX_BODY, handle

SECRET = "alma-webhook-secret"
ENV = {"ALMA_WEBHOOK_SECRET": SECRET}
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "events"
JSON_BODY = (SAMPLES / "job_end.json").read_bytes()
XML_BODY = (SAMPLES / "job_end.xml").read_bytes()
SAMPLE = json.loads(JSON_BODY)
NOW = datetime(2026, 11, 20, 3, 12, 45, 200000, tzinfo=UTC)
ALLOWED = {200, 202, 400, 401, 413}


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def post(body: bytes, env=None, headers=None, *, signed: bool = True):
    if headers is None:
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Exl-Signature"] = sign(body)
    return handle("POST", {}, headers, body, environ=ENV if env is None else env, now=NOW)


def event(**changes) -> dict:
    data = copy.deepcopy(SAMPLE)
    for key, value in changes.items():
        data[key] = value
    return data


def job(data: dict, **changes) -> dict:
    data["job_instance"].update(changes)
    return data


def body_of(data: dict) -> bytes:
    return json.dumps(data).encode()


# --------------------------------------------------------------------------------------------------
# Challenge


@pytest.mark.parametrize("challenge", ["abc123", 'quote " backslash \\ </script> & <b>', "Bibliothèque 図書館 😀",
                                       "x" * 1024, "é" * 512])
def test_challenge_is_echoed_as_escaped_json(challenge):
    result = handle("GET", {"challenge": challenge}, {}, b"", environ={})
    assert result.response.status == 200 and result.message is None
    assert result.response.headers["Content-Type"] == "application/json"
    assert json.loads(result.response.text) == {"challenge": challenge}
    assert result.response.text.isascii()


@pytest.mark.parametrize(("params", "error"), [
    ({}, "missing challenge"),
    ({"challenge": ""}, "missing challenge"),
    ({"challenge": "x" * 1025}, "longer than 1024 bytes"),
    ({"challenge": "é" * 513}, "longer than 1024 bytes"),
])
def test_bad_challenge_is_400(params, error):
    result = handle("GET", params, {}, b"", environ=ENV)
    assert result.response.status == 400
    assert error in result.response.body["error"]


def test_other_methods_are_405_with_allow():
    result = handle("PUT", {}, {}, JSON_BODY, environ=ENV)
    assert result.response.status == 405 and result.response.headers["Allow"] == "GET, POST"
    assert result.message is None


# --------------------------------------------------------------------------------------------------
# Signature


def test_known_answer_vector_from_openssl():
    # printf '%s' BODY | openssl dgst -sha256 -hmac alma-webhook-secret -binary | base64
    body = '{"id":"1","action":"NOTIFICATION","note":"Bibliothèque – 図書館"}'.encode()
    result = post(body, headers={"X-Exl-Signature": "5jlpyMkIRWAZUqkD5IzkZqWLqlkC20emwGdIeXTr2qk="})
    assert result.response.status == 200
    assert result.response.body == {"status": "ignored", "reason": "action NOTIFICATION is not handled"}


def test_compact_non_ascii_body_verifies():
    data = job(event(), name="Export – Bibliothèque 図書館 😀")
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    result = post(body)
    assert result.response.status == 202
    assert parse_queue_message(result.message).instance_name == "Export – Bibliothèque 図書館 😀"


def test_pretty_printed_body_verifies_over_raw_bytes():
    body = json.dumps(SAMPLE, indent=4, ensure_ascii=False).encode()
    assert body != json.dumps(json.loads(body)).encode()  # a re-serialising listener would fail here
    assert post(body).response.status == 202
    assert post(JSON_BODY).response.status == 202  # the sample file itself, as written


@pytest.mark.parametrize("name", ["x-exl-signature", "X-EXL-SIGNATURE", "X-Exl-Signature", "x-Exl-sIgnature"])
def test_header_name_is_case_insensitive(name):
    assert post(JSON_BODY, headers={name: sign(JSON_BODY)}).response.status == 202


@pytest.mark.parametrize(("headers", "error"), [
    ({}, "missing X-Exl-Signature"),
    ({"X-Exl-Signature": "  "}, "missing X-Exl-Signature"),
    ({"X-Exl-Signature": sign(JSON_BODY, "wrong-secret")}, "does not match"),
    ({"X-Exl-Signature": sign(JSON_BODY + b" ")}, "does not match"),
    ({"X-Exl-Signature": sign(JSON_BODY)[:-2]}, "does not match"),
    ({"X-Exl-Signature": "ÿ" * 44}, "does not match"),
    ({"X-Exl-Signature": "\ud800"}, "does not match"),
    ({"X-Exl-Signature": hmac.new(SECRET.encode(), JSON_BODY, hashlib.sha256).hexdigest()}, "does not match"),
])
def test_missing_or_wrong_signature_is_401(headers, error):
    result = post(JSON_BODY, headers=headers)
    assert result.response.status == 401 and result.message is None
    assert error in result.response.body["error"]


def test_tampered_body_is_401():
    signature = sign(JSON_BODY)
    tampered = JSON_BODY.replace(b"COMPLETED_SUCCESS", b"COMPLETED_WARNING")
    result = post(tampered, headers={"X-Exl-Signature": signature})
    assert result.response.status == 401 and result.message is None


def test_unconfigured_secret_is_503_with_a_clear_log(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.webhook")
    result = post(JSON_BODY, env={})
    assert result.response.status == 503 and result.message is None
    assert "ALMA_WEBHOOK_SECRET is not set" in result.response.body["error"]
    assert result.response.headers["Retry-After"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "ALMA_WEBHOOK_SECRET is not set" in errors[0].getMessage()


def test_a_bad_setting_is_503_naming_it():
    result = post(JSON_BODY, env={**ENV, "EXPORT_JOB_FILTER": "(unclosed"})
    assert result.response.status == 503
    assert "EXPORT_JOB_FILTER" in result.response.body["error"]


def test_allow_unsigned_accepts_and_warns_on_every_request(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.webhook")
    env = {"ALMA_WEBHOOK_ALLOW_UNSIGNED": "true"}
    assert post(JSON_BODY, env=env, signed=False).response.status == 202
    assert post(XML_BODY, env=env, headers={"X-Exl-Signature": "garbage"}).response.status == 202
    assert handle("GET", {"challenge": "c"}, {}, b"", environ=env).response.status == 200
    warnings = [r for r in caplog.records if "ALMA_WEBHOOK_ALLOW_UNSIGNED" in r.getMessage()]
    assert len(warnings) == 3 and all(r.levelno == logging.WARNING for r in warnings)


# --------------------------------------------------------------------------------------------------
# Bodies


def test_body_over_one_mib_is_413_and_exactly_one_mib_is_read():
    padded = JSON_BODY.rstrip() + b" " * (MAX_BODY - len(JSON_BODY.rstrip()))
    assert len(padded) == MAX_BODY and post(padded).response.status == 202
    result = post(padded + b" ")
    assert result.response.status == 413
    assert str(MAX_BODY) in result.response.body["error"]


def test_xml_body_is_queued_like_json():
    json_result = post(JSON_BODY)
    xml_result = post(XML_BODY)
    assert xml_result.response.status == 202
    assert xml_result.message == json_result.message


@pytest.mark.parametrize(("body", "error"), [
    (b"", "body is empty"),
    (b"{", "body is not valid JSON"),
    (b"[]", "body must be a JSON object, got list"),
    (body_of(event(job_instance="8816243980004146")), "job_instance must be an object, got string"),
    (body_of(job(event(), counter="c.jobs.bibExport.link")), "job_instance.counter must be a list, got string"),
    (body_of(event(job_instance=None)), "job_instance is missing"),
    (body_of(event(action=None)), "action is missing"),
    (b"<webhook><id>1</id><action>JOB_END</action></webhook>", "job_instance is missing"),
    (b"<webhook><id>1</id>", "body is not well-formed XML"),
    (b'<!DOCTYPE w [<!ENTITY e SYSTEM "file:///etc/passwd">]><webhook><id>&e;</id></webhook>', "DOCTYPE"),
    (b"\x00\x01\x02", "body is not valid JSON"),
])
def test_bad_bodies_are_400_naming_the_problem(body, error):
    result = post(body)
    assert result.response.status == 400 and result.message is None
    assert set(result.response.body) == {"error"}
    assert error in result.response.body["error"]


# --------------------------------------------------------------------------------------------------
# Dispatch


@pytest.mark.parametrize("status", ["COMPLETED_SUCCESS", "COMPLETED_WARNING", "COMPLETED_WARNINGS"])
def test_finished_export_job_is_queued(status):
    data = job(event(action="job_end"), status={"value": status, "desc": "x"})
    result = post(body_of(data))
    assert result.response.status == 202
    assert result.response.body == {"status": "queued", "event_id": "8816243990004146"}
    message = parse_queue_message(result.message)
    assert message.status == status and message.action == "JOB_END"
    assert message.job_id == "S5139276810004146"  # job_info.id, not the M0 of the link
    assert message.instance_id == "8816243980004146"
    assert message.received_at == "2026-11-20T03:12:45.200Z"
    assert message.counters[EXPORT_LINK_COUNTER] == "BIBS_nightly_8816243980004146"


@pytest.mark.parametrize("status", ["COMPLETED_FAILED", "FAILED", "SYSTEM_ABORTED", "RUNNING", "COMPLETED_NO_BULKS"])
def test_unfinished_or_failed_jobs_are_ignored(status):
    result = post(body_of(job(event(), status={"value": status})))
    assert result.response.status == 200 and result.message is None
    assert result.response.body["status"] == "ignored"
    assert status in result.response.body["reason"]


def test_export_job_statuses_setting_is_honoured():
    body = body_of(job(event(), status={"value": "COMPLETED_FAILED"}))
    assert post(body, env={**ENV, "EXPORT_JOB_STATUSES": "completed_failed"}).response.status == 202
    assert post(JSON_BODY, env={**ENV, "EXPORT_JOB_STATUSES": "COMPLETED_FAILED"}).response.status == 200


def test_without_a_filter_only_jobs_with_the_export_link_counter_are_queued():
    data = job(event(), counter=[{"type": {"value": "label.new.records"}, "value": "3"}])
    result = post(body_of(data))
    assert result.response.status == 200 and result.message is None
    assert EXPORT_LINK_COUNTER in result.response.body["reason"]


@pytest.mark.parametrize(("pattern", "queued"), [
    ("^S5139276810004146$", True),  # job_info.id
    ("Export Bibliographic", True),  # job_info.name
    ("Nightly discovery", True),  # job_instance.name
    ("M0", False),  # only in the link, which is not searched
    ("Weekly", False),
])
def test_export_job_filter_searches_job_id_job_name_and_instance_name(pattern, queued):
    data = job(event(), counter=[])  # the filter replaces the counter rule
    result = post(body_of(data), env={**ENV, "EXPORT_JOB_FILTER": pattern})
    assert result.response.status == (202 if queued else 200)
    assert (result.message is not None) == queued
    if not queued:
        assert "EXPORT_JOB_FILTER" in result.response.body["reason"]


@pytest.mark.parametrize("action", ["NOTIFICATION", "LOAN", "REQUEST", "USER", "BIB", "ITEM", "something_new"])
def test_other_actions_are_ignored(action):
    result = post(body_of(event(action=action, job_instance=None)))
    assert result.response.status == 200 and result.message is None
    assert result.response.body == {"status": "ignored", "reason": f"action {action} is not handled"}


def test_dispatch_table_lets_handlers_slot_in(monkeypatch):
    from pipeline.webhook import Decision

    monkeypatch.setitem(HANDLERS, "LOAN", lambda event, config, received_at: Decision(False, "loan seen"))
    result = post(body_of(event(action="loan", job_instance=None)))
    assert result.response.body == {"status": "ignored", "reason": "loan seen"}


# --------------------------------------------------------------------------------------------------
# Logging


def test_one_structured_line_per_request_without_secret_signature_or_body(caplog):
    caplog.set_level(logging.DEBUG)
    signature = sign(JSON_BODY)
    post(JSON_BODY, headers={"X-Exl-Signature": signature})
    post(JSON_BODY, headers={"X-Exl-Signature": sign(JSON_BODY, "wrong")})
    post(b"{", headers={"X-Exl-Signature": sign(b"{")})
    handle("GET", {"challenge": "c"}, {}, b"", environ=ENV)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.webhook"]
    assert len(lines) == 4
    queued = lines[0]
    for part in ("decision=queued", "status=202", "event_id=8816243990004146", "action=JOB_END",
                 "job=S5139276810004146", "instance=8816243980004146", "elapsed_ms="):
        assert part in queued
    assert "decision=rejected" in lines[1] and "status=401" in lines[1]
    assert "status=400" in lines[2] and "status=200" in lines[3]
    record = next(r for r in caplog.records if r.name == "pipeline.webhook")
    assert record.webhook["decision"] == "queued" and record.webhook["elapsed_ms"] >= 0
    everything = "\n".join(lines)
    assert SECRET not in everything and signature not in everything
    assert "BIBS_nightly" not in everything and "Nightly discovery" not in everything


def test_log_line_cannot_be_forged_by_the_body(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.webhook")
    post(body_of(event(action="LOAN\nwebhook decision=queued", job_instance=None)))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pipeline.webhook"]
    assert "\n" not in line and 'action="LOAN\\nwebhook decision=queued"' in line


# --------------------------------------------------------------------------------------------------
# Property: no input produces anything but 200/202/400/401/413


def _check(result):
    assert result.response.status in ALLOWED, result.response.body
    body = json.loads(result.response.text)
    assert isinstance(body, dict)
    if result.response.status == 202:
        parse_queue_message(result.message)
    else:
        assert result.message is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

_SAMPLE_PATHS = [
    ("id",), ("action",), ("institution",), ("job_instance",), ("job_instance", "id"), ("job_instance", "status"),
    ("job_instance", "status", "value"), ("job_instance", "counter"), ("job_instance", "counter", 0),
    ("job_instance", "counter", 0, "type"), ("job_instance", "counter", 0, "value"), ("job_instance", "job_info"),
    ("job_instance", "job_info", "id"), ("job_instance", "job_info", "name"), ("job_instance", "name"),
]


@st.composite
def mutated_samples(draw):
    data = copy.deepcopy(SAMPLE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_SAMPLE_PATHS))
        target = data
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass
    return json.dumps(data, ensure_ascii=draw(st.booleans())).encode()


_XML_NAMES = st.sampled_from(["webhook", "id", "action", "job_instance", "status", "counters", "counter", "type",
                              "value", "job_info", "name", "alerts", "institution", "x", "items"])


@st.composite
def xml_trees(draw, depth=0):
    name = draw(_XML_NAMES)
    attrs = draw(st.sampled_from(["", ' desc="d"', ' link="/x"']))
    if depth >= 3 or draw(st.booleans()):
        text = draw(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12))
        text = text.replace("&", "&amp;").replace("<", "&lt;")
        return f"<{name}{attrs}>{text}</{name}>"
    children = draw(st.lists(xml_trees(depth + 1), max_size=4))
    return f"<{name}{attrs}>{''.join(children)}</{name}>"


@st.composite
def xml_bodies(draw):
    inner = "".join(draw(st.lists(xml_trees(1), max_size=5)))
    root = draw(st.sampled_from(["webhook", "webhook", "other"]))
    doc = f"<{root}>{inner}</{root}>"
    if draw(st.booleans()):
        doc = '<?xml version="1.0" encoding="UTF-8"?>' + doc
    return doc.encode()


_ACTIONS = ["JOB_END", "job_end", "Job_End", "NOTIFICATION", "LOAN", "REQUEST", "USER", "BIB", "ITEM"]
_STATUSES = ["COMPLETED_SUCCESS", "COMPLETED_WARNING", "COMPLETED_WARNINGS", "COMPLETED_FAILED", "FAILED",
             "RUNNING", "SYSTEM_ABORTED"]
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=40).map(str.strip)
_COUNTER_NAMES = (st.sampled_from([EXPORT_LINK_COUNTER, "c.jobs.bibExport.exported", "label.new.records"])
                  | _TEXT.filter(bool))


@st.composite
def plausible_events(draw) -> dict:
    """Well-typed events with varied values: these reach dispatch, so 200 and 202 both happen."""
    data = copy.deepcopy(SAMPLE)
    data["id"] = draw(st.from_regex(r"[0-9]{1,19}", fullmatch=True))
    data["action"] = draw(st.sampled_from(_ACTIONS))
    data["institution"] = {"value": draw(_TEXT), "desc": draw(_TEXT)}
    ji = data["job_instance"]
    ji["name"] = draw(_TEXT)
    ji["status"] = {"value": draw(st.sampled_from(_STATUSES)), "desc": draw(_TEXT)}
    ji["job_info"]["name"] = draw(_TEXT)
    ji["counter"] = [{"type": {"value": draw(_COUNTER_NAMES), "desc": draw(_TEXT)}, "value": draw(_TEXT)}
                     for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        ji["counter"].insert(0, {"type": {"value": EXPORT_LINK_COUNTER}, "value": draw(_TEXT)})
    if draw(st.booleans()):
        ji["alerts"] = [{"value": draw(_TEXT), "desc": draw(_TEXT)}]
    return data


def to_alma_xml(data: dict) -> bytes:
    """Alma's XML convention, written independently of the parser: code fields carry `desc`, lists
    get a plural wrapper, nulls are left out."""
    from xml.sax.saxutils import escape, quoteattr

    def element(name: str, value) -> str:
        if value is None:
            return ""
        if isinstance(value, list):
            return f"<{name}>" + "".join(element(name[:-1], item) for item in value) + f"</{name}>"
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            return f"<{name} desc={quoteattr(value.get('desc', ''))}>{escape(str(value['value']))}</{name}>"
        if isinstance(value, dict):
            inner = "".join(element("counters" if k == "counter" else k, v) for k, v in value.items())
            return f"<{name}>{inner}</{name}>"
        return f"<{name}>{escape(str(value))}</{name}>"

    return ('<?xml version="1.0" encoding="UTF-8"?>' + element("webhook", data)).encode("utf-8")


def test_to_alma_xml_writes_the_sample_like_the_xml_twin():
    assert post(to_alma_xml(SAMPLE)).message == post(XML_BODY).message == post(JSON_BODY).message


bodies = (
    st.binary(max_size=2048)
    | json_values.map(lambda v: json.dumps(v).encode())
    | mutated_samples()
    | xml_bodies()
    | plausible_events().map(body_of)
    | plausible_events().map(to_alma_xml)
    | st.builds(lambda b, cut: b[:cut], st.sampled_from([JSON_BODY, XML_BODY]), st.integers(0, 2100))
)

_PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(body=bodies, signed=st.booleans())
def test_any_post_gets_only_allowed_statuses(body, signed):
    _check(post(body, signed=signed))


@_PROPERTY
@given(body=bodies, headers=st.dictionaries(st.sampled_from(["X-Exl-Signature", "x-exl-signature", "Content-Type"]),
                                            st.text(max_size=60), max_size=3))
def test_any_headers_get_only_allowed_statuses(body, headers):
    _check(post(body, headers=headers))


@_PROPERTY
@given(data=plausible_events())
def test_json_and_xml_forms_of_any_event_get_the_same_answer(data):
    from_json, from_xml = post(body_of(data)), post(to_alma_xml(data))
    _check(from_json)
    assert from_json.response.status in (200, 202)
    assert (from_xml.response.status, from_xml.response.body) == (from_json.response.status, from_json.response.body)
    assert from_xml.message == from_json.message


def test_huge_body_of_any_content_is_413():
    for body in (b"\xff" * (MAX_BODY + 1), b"<" * (MAX_BODY + 1), JSON_BODY + b" " * MAX_BODY):
        _check(result := post(body))
        assert result.response.status == 413


def test_concurrent_requests_from_the_host_thread_pool_give_identical_answers():
    from concurrent.futures import ThreadPoolExecutor

    bodies = [JSON_BODY, XML_BODY] * 100
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(post, bodies))
    assert {r.response.status for r in results} == {202}
    assert len({r.message for r in results}) == 1
