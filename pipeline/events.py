"""The normalised Alma webhook event (from a JSON or an XML body) and the export-job queue message.

Alma sends the same event as JSON or as XML (chosen in the integration profile). Both forms become
one `Event`, so nothing downstream cares which one arrived. Bad input raises `EventError` whose
message names the field and says what was wrong; the webhook turns it into a 400.

The queue message (`JobMessage`, schema in docs/queue-message.md) is what the listener hands to the
worker: compact, versioned JSON, a few hundred bytes and never more than `MESSAGE_LIMIT`, well below
the ~48 KiB an Azure Storage queue message can carry after base64.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

MESSAGE_VERSION = 1
MESSAGE_LIMIT = 24 * 1024
"""Upper bound of a serialised queue message in UTF-8 bytes (the queue allows ~48 KiB after base64)."""

MAX_ID = 255
"""Longest id, code or time accepted (event, job, instance, action, status, institution, counter name,
timestamps); Alma's are under 40 characters."""
MAX_TEXT = 1024
"""Longest free text accepted (names, descriptions, counter values)."""

EXPORT_LINK_COUNTER = "c.jobs.bibExport.link"
"""The counter holding an export job's output file-name stem; its presence marks an export job."""

# XML list wrappers (plural element in XML, array named by the singular in JSON). Any other element
# whose children all carry the singular name of the element is treated as a wrapper too.
_XML_WRAPPERS = {"counters": "counter", "alerts": "alert"}


class EventError(ValueError):
    """The body is not a usable Alma event; the message names what was wrong (answered with 400)."""


class QueueMessageError(ValueError):
    """A queue message does not follow the schema; the message names what was wrong."""


@dataclass(frozen=True, slots=True)
class JobInstance:
    """The part of a JOB_END event the pipeline needs. `job_id` comes from `job_info.id`, never from
    `link`, which in real traffic can name a different job (`/conf/jobs/M0/...`)."""

    id: str
    job_id: str
    job_name: str
    name: str
    status: str
    status_desc: str
    end_time: str
    counters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    """One Alma webhook event, whatever the body format."""

    id: str
    action: str
    institution: str
    time: str
    job_instance: JobInstance | None
    format: str  # "json" or "xml"

    @property
    def action_key(self) -> str:
        """The action for dispatch: documentation samples say `job_end`, real traffic `JOB_END`."""
        return self.action.upper()


@dataclass(frozen=True, slots=True)
class JobMessage:
    """The message one queued JOB_END becomes (version `MESSAGE_VERSION`)."""

    event_id: str
    action: str
    institution: str
    job_id: str
    instance_id: str
    job_name: str
    instance_name: str
    status: str
    end_time: str
    counters: dict[str, str]
    received_at: str
    counters_truncated: bool = False


# --------------------------------------------------------------------------------------------------
# Body -> Event


def parse_event(body: bytes) -> Event:
    """Parse a webhook body into an `Event`. The format is decided by the first non-blank byte
    (`<` means XML) rather than Content-Type, which proxies and test tools get wrong."""
    if not body or not body.strip():
        raise EventError("body is empty; expected a JSON or XML Alma event")
    start = body.lstrip()
    if start.startswith(b"\xef\xbb\xbf"):
        start = start[3:].lstrip()
    if start.startswith(b"<"):
        return event_from_mapping(_xml_to_mapping(body), "xml")
    return event_from_mapping(_json_to_mapping(body), "json")


def _reject_constant(name: str) -> Any:
    raise EventError(f"body is not valid JSON: {name} is not a JSON number")


def _json_to_mapping(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EventError(f"body is not UTF-8 text (byte {exc.start}); expected a JSON or XML Alma event") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise EventError("body is not valid JSON: nested too deeply") from None
    except EventError:
        raise
    except ValueError as exc:  # JSONDecodeError, and int literals over Python's digit limit
        raise EventError(f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EventError(f"body must be a JSON object, got {_kind(value)}")
    return value


_PARSERS = threading.local()


def _xml_parser() -> etree.XMLParser:
    """One safe parser per thread (sync functions run in a thread pool; an lxml parser serialises
    concurrent use with a lock): no entities, no DTD, no network."""
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        parser = _PARSERS.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
        )
    return parser


def _xml_to_mapping(body: bytes) -> dict[str, Any]:
    # A DOCTYPE is refused outright (as defusedxml does): Alma never sends one, and refusing it
    # closes entity expansion and external-entity tricks before they start.
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in head:
        raise EventError("XML body must not contain a DOCTYPE or entity declarations")
    try:
        root = etree.fromstring(body, _xml_parser())
    except etree.XMLSyntaxError as exc:
        raise EventError(f"body is not well-formed XML: {exc}") from None
    except ValueError as exc:  # e.g. a Unicode string with an encoding declaration
        raise EventError(f"body is not usable XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise EventError("XML body must not contain a DOCTYPE or entity declarations")
    name = _local(root.tag)
    if name != "webhook":
        raise EventError(f"XML root element must be <webhook>, got <{name}>")
    value = _xml_element(root, name)
    return value if isinstance(value, dict) else {}


def _local(tag: str) -> str:
    return tag.rpartition("}")[2] if "}" in tag else tag


def _xml_element(element: Any, name: str) -> Any:
    """Convert one element by Alma's conventions: `desc` attribute = code-table field, plural wrapper
    = array named by the singular, other children = object keys. (The hot loop of XML bodies, hence
    the terse style.)"""
    children = [child for child in element if child.tag.__class__ is str]  # elements only
    if not children:
        text = element.text
        text = text.strip() if text else ""
        if not text and name in _XML_WRAPPERS:
            return []
        desc = element.get("desc")
        if desc is not None:
            return {"value": text, "desc": desc}
        return text
    names = [_local(child.tag) for child in children]
    singular = _XML_WRAPPERS.get(name) or (name[:-1] if len(name) > 1 and name[-1] == "s" else None)
    if singular and names.count(singular) == len(names):
        return [_xml_element(child, singular) for child in children]
    result: dict[str, Any] = {}
    attributes = element.keys()
    for key in attributes:
        if "}" not in key:
            result[key] = element.get(key)
    for child_name, child in zip(names, children, strict=True):
        value = _xml_element(child, child_name)
        if child_name in _XML_WRAPPERS:  # even when malformed, so the type check names it
            child_name = _XML_WRAPPERS[child_name]
        elif value.__class__ is list:  # a generic plural wrapper: the array is named by the singular
            child_name = child_name[:-1]
        if child_name in result and child_name not in attributes:
            previous = result[child_name]
            result[child_name] = [*previous, value] if previous.__class__ is list else [previous, value]
        else:
            result[child_name] = value
    return result


# --------------------------------------------------------------------------------------------------
# Mapping (JSON shape) -> Event, with type checks that name the field


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool = False, limit: int = MAX_TEXT) -> str:
    value = obj.get(key)
    path = f"{where}{key}"
    if value is None or value == "":
        if required:
            raise EventError(f"{path} is missing")
        return ""
    if not isinstance(value, str):
        raise EventError(f"{path} must be a string, got {_kind(value)}")
    if len(value) > limit:
        raise EventError(f"{path} is longer than {limit} characters")
    return _unicode(value, path, strict=limit <= MAX_ID)


def _unicode(value: str, path: str, *, strict: bool) -> str:
    """JSON's `\\ud800` escapes can carry lone surrogates, which no UTF-8 encoder accepts (the queue
    message would fail to serialise): an id or code with one is refused, free text gets U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        if strict:
            raise EventError(f"{path} contains a lone surrogate (\\ud800-\\udfff), which is not text") from None
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def _code(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> tuple[str, str]:
    """A code-table field: {"value": code, "desc": label} in JSON; a plain string is accepted too."""
    value = obj.get(key)
    path = f"{where}{key}"
    if value is None or value == "":
        if required:
            raise EventError(f"{path} is missing")
        return "", ""
    if isinstance(value, str):
        if len(value) > MAX_ID:
            raise EventError(f"{path} is longer than {MAX_ID} characters")
        return _unicode(value, path, strict=True), ""
    if not isinstance(value, dict):
        raise EventError(f"{path} must be an object with a value, got {_kind(value)}")
    code = _text(value, "value", f"{path}.", required=required, limit=MAX_ID)
    desc = _text(value, "desc", f"{path}.")
    return code, desc


def _object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, dict):
        raise EventError(f"{where}{key} must be an object, got {_kind(value)}")
    return value


def _counters(obj: dict[str, Any], where: str) -> dict[str, str]:
    value = obj.get("counter")
    path = f"{where}counter"
    if value is None or value == "":
        return {}
    if not isinstance(value, list):
        raise EventError(f"{path} must be a list, got {_kind(value)}")
    counters: dict[str, str] = {}
    for index, item in enumerate(value):
        here = f"{path}[{index}]"
        if not isinstance(item, dict):
            raise EventError(f"{here} must be an object, got {_kind(item)}")
        name, _desc = _code(item, "type", f"{here}.", required=True)
        raw = item.get("value")
        if raw is None:
            count = ""
        elif isinstance(raw, str):
            count = raw
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            count = json.dumps(raw)  # Alma sends strings; a number is read as its JSON text
        else:
            raise EventError(f"{here}.value must be a string, got {_kind(raw)}")
        if len(count) > MAX_TEXT:
            raise EventError(f"{here}.value is longer than {MAX_TEXT} characters")
        counters[name] = _unicode(count, f"{here}.value", strict=False)
    return counters


def _job_instance(obj: dict[str, Any]) -> JobInstance:
    where = "job_instance."
    info = _object(obj, "job_info", where)
    if info is None:
        raise EventError("job_instance.job_info is missing (it names the job)")
    status, status_desc = _code(obj, "status", where, required=True)
    return JobInstance(
        id=_text(obj, "id", where, required=True, limit=MAX_ID),
        job_id=_text(info, "id", "job_instance.job_info.", required=True, limit=MAX_ID),
        job_name=_text(info, "name", "job_instance.job_info."),
        name=_text(obj, "name", where),
        status=status,
        status_desc=status_desc,
        end_time=_text(obj, "end_time", where, limit=MAX_ID),
        counters=_counters(obj, where),
    )


def event_from_mapping(data: dict[str, Any], body_format: str = "json") -> Event:
    """Validate a JSON-shaped event and build the `Event`; wrong types raise `EventError`."""
    if not isinstance(data, dict):
        raise EventError(f"event must be an object, got {_kind(data)}")
    action = _text(data, "action", "", required=True, limit=MAX_ID)
    institution, _desc = _code(data, "institution", "")
    instance_obj = _object(data, "job_instance", "")
    return Event(
        id=_text(data, "id", "", required=True, limit=MAX_ID),
        action=action,
        institution=institution,
        time=_text(data, "time", "", limit=MAX_ID),
        job_instance=None if instance_obj is None else _job_instance(instance_obj),
        format=body_format,
    )


# --------------------------------------------------------------------------------------------------
# Queue message


def job_message(event: Event, received_at: str) -> JobMessage:
    """The queue message for a JOB_END event (which must carry a job instance)."""
    job = event.job_instance
    if job is None:
        raise EventError("job_instance is missing (JOB_END events carry the job instance)")
    return JobMessage(
        event_id=event.id,
        action=event.action_key,
        institution=event.institution,
        job_id=job.job_id,
        instance_id=job.id,
        job_name=job.job_name,
        instance_name=job.name,
        status=job.status,
        end_time=job.end_time,
        counters=dict(job.counters),
        received_at=received_at,
    )


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def serialize_message(message: JobMessage) -> str:
    """Compact JSON for the queue. If the counters would push it past `MESSAGE_LIMIT`, the export
    link counter is kept, others are kept while they fit, and `counters_truncated` is set: the
    worker reads the authoritative counters from the Alma API anyway."""
    body: dict[str, Any] = {
        "v": MESSAGE_VERSION,
        "event_id": message.event_id,
        "action": message.action,
        "institution": message.institution,
        "job_id": message.job_id,
        "instance_id": message.instance_id,
        "job_name": message.job_name,
        "instance_name": message.instance_name,
        "status": message.status,
        "end_time": message.end_time,
        "received_at": message.received_at,
        "counters": message.counters,
    }
    if message.counters_truncated:
        body["counters_truncated"] = True
    text = _dumps(body)
    if len(text.encode("utf-8")) <= MESSAGE_LIMIT:
        return text
    body["counters"] = {}
    body["counters_truncated"] = True
    budget = MESSAGE_LIMIT - len(_dumps(body).encode("utf-8"))
    ordered = sorted(message.counters.items(), key=lambda kv: kv[0] != EXPORT_LINK_COUNTER)
    kept: dict[str, str] = {}
    for name, value in ordered:
        cost = len(_dumps({name: value}).encode("utf-8"))  # the pair plus braces covers a comma
        if cost <= budget:
            kept[name] = value
            budget -= cost
    body["counters"] = kept
    text = _dumps(body)
    if len(text.encode("utf-8")) > MESSAGE_LIMIT:  # unreachable for events that passed validation
        raise ValueError(f"queue message for event {message.event_id} exceeds {MESSAGE_LIMIT} bytes")
    return text


_REQUIRED_TEXT = ("event_id", "action", "job_id", "instance_id", "received_at")
_OPTIONAL_TEXT = ("institution", "job_name", "instance_name", "status", "end_time")


def parse_queue_message(raw: str | bytes) -> JobMessage:
    """Read a queue message (worker side); unknown keys are ignored so a version can grow fields."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise QueueMessageError("queue message is not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise QueueMessageError(f"queue message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QueueMessageError(f"queue message must be a JSON object, got {_kind(data)}")
    version = data.get("v")
    if version != MESSAGE_VERSION or isinstance(version, bool):
        raise QueueMessageError(f"queue message version {version!r} is not supported (expected {MESSAGE_VERSION})")
    values: dict[str, Any] = {}
    for key in _REQUIRED_TEXT + _OPTIONAL_TEXT:
        value = data.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise QueueMessageError(f"queue message field {key} must be a string, got {_kind(value)}")
        if key in _REQUIRED_TEXT and not value:
            raise QueueMessageError(f"queue message field {key} is missing")
        values[key] = value
    counters = data.get("counters") or {}
    if not isinstance(counters, dict) or not all(isinstance(v, str) for v in counters.values()):
        raise QueueMessageError("queue message field counters must be an object of strings")
    truncated = data.get("counters_truncated", False)
    if not isinstance(truncated, bool):
        raise QueueMessageError("queue message field counters_truncated must be true or false")
    return JobMessage(counters=dict(counters), counters_truncated=truncated, **values)
