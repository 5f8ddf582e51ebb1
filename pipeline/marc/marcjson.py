"""MARC-in-JSON lines (one `{"leader": ..., "fields": [...]}` object per line): reader and writer.

The shape is the Library of Congress / pymarc MARC-in-JSON: a control field is `{"001": "value"}`,
a data field `{"245": {"ind1": "1", "ind2": "0", "subfields": [{"a": "Title"}]}}`. A line that
is not valid JSON or not this shape rejects that record only.
"""

from __future__ import annotations

import json
import re

from pipeline.marc.record import Field, Record, RecordError


def parse_json_line(raw: bytes) -> Record:
    """Parse one line of MARC-in-JSON."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not valid JSON: {exc}", "json-invalid") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("leader"), str) or not isinstance(obj.get("fields"), list):
        raise RecordError('not a MARC-in-JSON record (needs "leader" text and a "fields" list)', "json-not-marc")
    fields = []
    for item in obj["fields"]:
        if not isinstance(item, dict) or len(item) != 1:
            raise RecordError(f"field entry {str(item)[:60]!r} is not an object with one tag", "json-field-shape")
        ((tag, body),) = item.items()
        if isinstance(body, str):
            fields.append(Field(tag, " ", " ", None, body))
            continue
        if not isinstance(body, dict) or not isinstance(body.get("subfields", []), list):
            raise RecordError(f"field {tag} is neither text nor an object with subfields", "json-field-shape")
        subs = []
        for sub in body.get("subfields", []):
            if not isinstance(sub, dict) or len(sub) != 1:
                raise RecordError(f"field {tag}: subfield entry {str(sub)[:60]!r} is not an object with one code",
                                  "json-field-shape")
            ((code, value),) = sub.items()
            if not isinstance(value, str):
                raise RecordError(f"field {tag}: subfield {code} value is not text", "json-field-shape")
            subs.append((code, value))
        ind1, ind2 = body.get("ind1", " "), body.get("ind2", " ")
        if not isinstance(ind1, str) or not isinstance(ind2, str):
            raise RecordError(f"field {tag}: indicators must be text", "json-field-shape")
        fields.append(Field(tag, ind1 or " ", ind2 or " ", subs))
    return Record(obj["leader"], fields)


_ID = re.compile(rb'\{\s*"001"\s*:\s*"((?:[^"\\]|\\.)*)"')


def salvage_id(raw: bytes | None) -> str | None:
    """The 001 of a line that did not parse, found by a pattern."""
    if not raw:
        return None
    m = _ID.search(raw[:200_000])
    return m.group(1).decode("utf-8", "replace") or None if m else None


def record_to_json(record: Record) -> dict:
    """The MARC-in-JSON object for a record."""
    fields = []
    for f in record.fields:
        if f.subfields is None:
            fields.append({f.tag: f.value or ""})
        else:
            fields.append({f.tag: {"ind1": f.ind1, "ind2": f.ind2,
                                   "subfields": [{c: v} for c, v in f.subfields]}})
    return {"leader": record.leader, "fields": fields}


class MarcJsonEncoder:
    """MARC-in-JSON lines: one compact JSON object per line, UTF-8."""

    extension = "json"

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def header(self) -> bytes:
        return b""

    def footer(self) -> bytes:
        return b""

    def encode(self, record: Record) -> bytes:
        if len(record.leader) != 24:
            raise RecordError(f"leader is {len(record.leader)} characters; MARC-in-JSON readers need 24: "
                              f"{record.leader!r}", "leader-length")
        for f in record.fields:
            if len(f.tag) != 3:
                raise RecordError(f"tag {f.tag!r} is not 3 characters", "tag-invalid")
            if f.subfields and not all(c for c, _ in f.subfields):
                raise RecordError(f"field {f.tag}: a subfield has no code", "subfield-code-missing")
        text = json.dumps(record_to_json(record), ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode("utf-8") + b"\n"
        except UnicodeEncodeError as exc:
            raise RecordError(f"cannot encode as UTF-8: {exc.reason}", "unicode-unencodable") from None
