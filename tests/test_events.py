"""The normalised event (JSON and XML bodies) and the queue message schema."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.events import (
    EXPORT_LINK_COUNTER,
    MESSAGE_LIMIT,
    MESSAGE_VERSION,
    EventError,
    JobMessage,
    QueueMessageError,
    event_from_mapping,
    job_message,
    parse_event,
    parse_queue_message,
    serialize_message,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "events"
JSON_BODY = (SAMPLES / "job_end.json").read_bytes()
XML_BODY = (SAMPLES / "job_end.xml").read_bytes()
SAMPLE = json.loads(JSON_BODY)


def _without_format(event):
    fields = dataclasses.asdict(event)
    fields.pop("format")
    return fields


def test_json_and_xml_samples_become_the_same_event():
    from_json = parse_event(JSON_BODY)
    from_xml = parse_event(XML_BODY)
    assert (from_json.format, from_xml.format) == ("json", "xml")
    assert _without_format(from_json) == _without_format(from_xml)
    job = from_json.job_instance
    assert from_json.id == "8816243990004146" and from_json.institution == "01XYZ_INST"
    assert job.status == "COMPLETED_SUCCESS" and job.status_desc == "Completed Successfully"
    assert job.counters[EXPORT_LINK_COUNTER] == "BIBS_nightly_8816243980004146"
    assert job.counters["c.jobs.bibExport.exported"] == "48213"


def test_job_id_comes_from_job_info_not_from_the_m0_link():
    job = parse_event(JSON_BODY).job_instance
    assert "/M0/" in SAMPLE["job_instance"]["link"]
    assert job.job_id == "S5139276810004146" and job.id == "8816243980004146"


def test_action_compares_case_insensitively_and_bom_is_accepted():
    data = copy.deepcopy(SAMPLE)
    data["action"] = "job_end"
    event = parse_event(b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert event.action == "job_end" and event.action_key == "JOB_END"


def test_xml_with_a_namespace_and_plain_code_fields_is_read():
    body = b"""<?xml version="1.0"?>
    <webhook xmlns="http://com/exlibris/urm/general/xmlbeans">
      <id>1</id><action>job_end</action><institution>01ABC</institution>
      <job_instance><id>22</id><status>COMPLETED_WARNING</status>
        <counters><counter><type>c.jobs.bibExport.link</type><value>stem</value></counter></counters>
        <job_info><id>S9</id><name>Export &amp; more</name></job_info>
      </job_instance>
    </webhook>"""
    event = parse_event(body)
    assert event.institution == "01ABC" and event.action_key == "JOB_END"
    assert event.job_instance.status == "COMPLETED_WARNING"
    assert event.job_instance.job_name == "Export & more"
    assert event.job_instance.counters == {EXPORT_LINK_COUNTER: "stem"}


def test_xml_empty_counters_wrapper_is_an_empty_list():
    body = XML_BODY.replace(XML_BODY[XML_BODY.index(b"<counters>"):XML_BODY.index(b"</counters>") + 11],
                            b"<counters/>")
    assert parse_event(body).job_instance.counters == {}


def _mutated(path, value):
    data = copy.deepcopy(SAMPLE)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is empty"),
        (b"  \n ", "body is empty"),
        (b"{not json", "body is not valid JSON"),
        (b'{"id": NaN}', "NaN is not a JSON number"),
        (b"[1, 2]", "body must be a JSON object, got list"),
        (b'"JOB_END"', "body must be a JSON object, got string"),
        (b"\xff\xfe{}", "body is not UTF-8 text"),
        (b"[" * 100_000, "body is not valid JSON"),
        (_mutated(["action"], _DELETE), "action is missing"),
        (_mutated(["action"], 7), "action must be a string, got number"),
        (_mutated(["id"], ["x"]), "id must be a string, got list"),
        (_mutated(["institution"], [1]), "institution must be an object with a value, got list"),
        (_mutated(["job_instance"], "8816243980004146"), "job_instance must be an object, got string"),
        (_mutated(["job_instance", "counter"], "c.jobs"), "job_instance.counter must be a list, got string"),
        (_mutated(["job_instance", "counter"], 3), "job_instance.counter must be a list, got number"),
        (_mutated(["job_instance", "counter"], {"type": {"value": "x"}, "value": "1"}),
         "job_instance.counter must be a list, got object"),
        (_mutated(["job_instance", "counter"], [1]), "job_instance.counter[0] must be an object, got number"),
        (_mutated(["job_instance", "counter"], [{"value": "1"}]), "job_instance.counter[0].type is missing"),
        (_mutated(["job_instance", "counter"], [{"type": {"value": "x"}, "value": {}}]),
         "job_instance.counter[0].value must be a string, got object"),
        (_mutated(["job_instance", "status"], _DELETE), "job_instance.status is missing"),
        (_mutated(["job_instance", "status"], {"desc": "x"}), "job_instance.status.value is missing"),
        (_mutated(["job_instance", "status"], True), "job_instance.status must be an object with a value, got boolean"),
        (_mutated(["job_instance", "id"], None), "job_instance.id is missing"),
        (_mutated(["job_instance", "id"], "9" * 300), "job_instance.id is longer than 255 characters"),
        (_mutated(["job_instance", "name"], "n" * 2000), "job_instance.name is longer than 1024 characters"),
        (_mutated(["job_instance", "status"], {"value": "S" * 256}),
         "job_instance.status.value is longer than 255 characters"),
        (_mutated(["job_instance", "counter"], [{"type": "t" * 256, "value": "1"}]),
         "job_instance.counter[0].type is longer than 255 characters"),
        (_mutated(["job_instance", "job_info"], _DELETE), "job_instance.job_info is missing"),
        (_mutated(["job_instance", "job_info"], []), "job_instance.job_info must be an object, got list"),
        (_mutated(["job_instance", "job_info", "id"], 5139276810004146), "job_instance.job_info.id must be a string"),
        (b"<webhook><id>1</id>", "body is not well-formed XML"),
        (b"<event><id>1</id></event>", "XML root element must be <webhook>, got <event>"),
        (b"<webhook><id>1</id><action>JOB_END</action><job_instance>x</job_instance></webhook>",
         "job_instance must be an object, got string"),
        (b"<webhook><id>1</id><action>JOB_END</action><job_instance><id>2</id><status>COMPLETED_SUCCESS</status>"
         b"<counter>7</counter><job_info><id>S</id></job_info></job_instance></webhook>",
         "job_instance.counter must be a list, got string"),
        (b"<webhook>" * 300 + b"</webhook>" * 300, "body is not well-formed XML"),
        (b"<webhook><id>1</id><action>JOB_END</action><job_instance><id>2</id><status>COMPLETED_SUCCESS</status>"
         b"<counters>7</counters><job_info><id>S</id></job_info></job_instance></webhook>",
         "job_instance.counter must be a list, got string"),
        (b"<webhook><id>1</id><action>JOB_END</action><job_instance><id>2</id><status>COMPLETED_SUCCESS</status>"
         b"<counters><x>7</x></counters><job_info><id>S</id></job_info></job_instance></webhook>",
         "job_instance.counter must be a list, got object"),
    ],
)
def test_bad_bodies_raise_event_error_naming_the_problem(body, message):
    with pytest.raises(EventError) as err:
        parse_event(body)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "body",
    [
        # Billion laughs
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b"<webhook><id>&lol2;</id><action>JOB_END</action></webhook>",
        # External entity (file)
        b'<?xml version="1.0"?><!DOCTYPE w [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<webhook><id>&xxe;</id><action>JOB_END</action></webhook>",
        # External DTD over the network
        b'<?xml version="1.0"?><!DOCTYPE webhook SYSTEM "http://127.0.0.1:9/evil.dtd">'
        b"<webhook><id>1</id><action>JOB_END</action></webhook>",
        # DOCTYPE hidden behind a long comment
        b"<?xml version='1.0'?><!--" + b"x" * 5000
        + b'--><!DOCTYPE w [<!ENTITY e "boom">]><webhook><id>&e;</id></webhook>',
    ],
)
def test_xml_doctypes_and_entities_are_refused(body):
    with pytest.raises(EventError) as err:
        parse_event(body)
    assert "DOCTYPE" in str(err.value)
    assert "root:" not in str(err.value)


def test_event_from_mapping_rejects_a_non_object():
    with pytest.raises(EventError, match="event must be an object, got list"):
        event_from_mapping([])  # type: ignore[arg-type]


def test_numeric_counter_values_are_read_as_text():
    body = _mutated(["job_instance", "counter"], [{"type": {"value": "c.jobs.bibExport.exported"}, "value": 12}])
    assert parse_event(body).job_instance.counters == {"c.jobs.bibExport.exported": "12"}


# --------------------------------------------------------------------------------------------------
# Queue message


def test_queue_message_is_compact_versioned_and_round_trips():
    text = serialize_message(job_message(parse_event(JSON_BODY), "2026-11-20T03:12:45.200Z"))
    assert "\n" not in text and ": " not in text and ", " not in text.replace(", more", "")
    data = json.loads(text)
    assert data["v"] == MESSAGE_VERSION == 1
    assert data["job_id"] == "S5139276810004146" and data["instance_id"] == "8816243980004146"
    assert data["counters"][EXPORT_LINK_COUNTER] == "BIBS_nightly_8816243980004146"
    assert len(text.encode()) < 1024
    message = parse_queue_message(text.encode())
    assert message == JobMessage(
        event_id="8816243990004146", action="JOB_END", institution="01XYZ_INST", job_id="S5139276810004146",
        instance_id="8816243980004146", job_name="Export Bibliographic Records",
        instance_name="Export Bibliographic Records - Nightly discovery export - 11/20/2026 03:05",
        status="COMPLETED_SUCCESS", end_time="2026-11-20T03:12:44.870Z",
        counters=SAMPLE_COUNTERS, received_at="2026-11-20T03:12:45.200Z",
    )


SAMPLE_COUNTERS = {c["type"]["value"]: c["value"] for c in SAMPLE["job_instance"]["counter"]}


def test_non_ascii_survives_the_message_unescaped():
    body = _mutated(["job_instance", "name"], "Export – Bibliothèque 図書館 😀")
    text = serialize_message(job_message(parse_event(body), "t"))
    assert "Bibliothèque 図書館 😀" in text
    assert parse_queue_message(text).instance_name == "Export – Bibliothèque 図書館 😀"


def test_oversized_counters_are_trimmed_keeping_the_export_link():
    counters = [{"type": {"value": f"c.extra.{i:04d}"}, "value": "é" * 1000} for i in range(60)]
    counters.append({"type": {"value": EXPORT_LINK_COUNTER}, "value": "STEM_1"})
    event = parse_event(_mutated(["job_instance", "counter"], counters))
    text = serialize_message(job_message(event, "2026-11-20T03:12:45.200Z"))
    assert len(text.encode("utf-8")) <= MESSAGE_LIMIT < 48 * 1024
    message = parse_queue_message(text)
    assert message.counters_truncated is True
    assert message.counters[EXPORT_LINK_COUNTER] == "STEM_1"
    assert 1 < len(message.counters) < 61


def test_largest_possible_event_still_fits_the_queue():
    """Every field at its length limit, every character 4 UTF-8 bytes: still under the limit."""
    big, code = "😀" * 1024, "😀" * 255
    data = copy.deepcopy(SAMPLE)
    data["id"] = data["action"] = data["institution"] = code
    ji = data["job_instance"]
    ji["id"] = ji["job_info"]["id"] = ji["end_time"] = code
    ji["name"] = ji["job_info"]["name"] = big
    ji["status"] = {"value": code, "desc": big}
    ji["counter"] = [{"type": {"value": code[:-1] + str(i)}, "value": big} for i in range(3)]
    text = serialize_message(job_message(parse_event(json.dumps(data).encode()), "2026-11-20T03:12:45.200Z"))
    assert len(text.encode("utf-8")) <= MESSAGE_LIMIT
    assert parse_queue_message(text).counters_truncated is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff", "not UTF-8"),
        ("{", "not JSON"),
        ("[]", "must be a JSON object, got list"),
        ('{"v": 2, "event_id": "1"}', "version 2 is not supported"),
        ('{"event_id": "1"}', "version None is not supported"),
        ('{"v": true}', "version True is not supported"),
        ('{"v": 1, "event_id": "1", "action": "JOB_END", "job_id": "S", "received_at": "t"}',
         "field instance_id is missing"),
        ('{"v": 1, "event_id": 1}', "field event_id must be a string, got number"),
        ('{"v": 1, "event_id": "1", "action": "A", "job_id": "S", "instance_id": "I", "received_at": "t", '
         '"counters": {"a": 1}}', "counters must be an object of strings"),
        ('{"v": 1, "event_id": "1", "action": "A", "job_id": "S", "instance_id": "I", "received_at": "t", '
         '"counters_truncated": "yes"}', "counters_truncated must be true or false"),
    ],
)
def test_bad_queue_messages_are_named(raw, message):
    with pytest.raises(QueueMessageError) as err:
        parse_queue_message(raw)
    assert message in str(err.value)


def test_queue_message_tolerates_unknown_fields_of_the_same_version():
    text = serialize_message(job_message(parse_event(JSON_BODY), "t"))
    data = json.loads(text)
    data["added_later"] = {"x": 1}
    assert parse_queue_message(json.dumps(data)).job_id == "S5139276810004146"
