"""Seeded hostile inputs, shared by the fuzz tests (tests/test_fuzz.py) and the long run in bench/.

`webhook_bodies(seed, n)` yields `(body, signed)`: mutated JSON and XML JOB_END events (structural
mutations with lone surrogates, deep nesting, huge numbers, wrong types; byte flips, cuts and
splices; entity declarations) and random bodies. `marc_inputs(seed, n)` yields `(name, bytes)`:
mutated MARC 21, MARCXML and MARC-in-JSON files made from the samples. The same seed always gives
the same inputs, so a failure is reproduced by its seed and index.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "samples" / "events"
EXPORTS = ROOT / "samples" / "exports"
ALLOWED = frozenset({200, 202, 400, 401, 413})

_SURROGATES = [r"\ud800", r"\udfff", r"\udbff", r"\udc00", r"\ud83d", r"\ud83d\ude00", r"\udc00\ud800"]
_NASTY_TEXT = ["", " ", "\u0000", "\u202e", "\ufeff", "\n\r", "A" * 2000, "\u00e9" * 600, "..", "/", "CON",
               "%s%n", "{{job_name}}", "<x>", "&amp;", "\\", '"', "\U0001f600"]


def sign(secret: str, body: bytes) -> str:
    """X-Exl-Signature as Alma computes it (written here, never taken from the code under test)."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode()


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*prefix, i)))
    return out


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _nasty_value(rng: random.Random) -> Any:
    kind = rng.randrange(10)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 1e308, 2**70])
    if kind == 2:
        return []
    if kind == 3:
        return {"value": rng.choice(_NASTY_TEXT)}
    if kind == 4:
        nested: Any = "x"
        for _ in range(rng.randrange(10, 400)):
            nested = [nested]
        return nested
    return rng.choice(_NASTY_TEXT) + "".join(rng.choice("ab\u00e9\u4e2d ") for _ in range(rng.randrange(8)))


def _json_mutation(rng: random.Random, sample: dict) -> bytes:
    doc = copy.deepcopy(sample)
    marker = None
    for _ in range(rng.randrange(1, 4)):
        paths = _paths(doc)
        path = rng.choice(paths[1:])
        try:
            if rng.random() < 0.2 and len(path) > 0:
                parent = doc
                for key in path[:-1]:
                    parent = parent[key]
                if isinstance(parent, dict):
                    del parent[path[-1]]
                    continue
            if rng.random() < 0.35 and marker is None:
                marker = "@@SURROGATE@@"
                _set(doc, path, marker)
            else:
                _set(doc, path, _nasty_value(rng))
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(doc, indent=rng.choice([None, 2]))
    if marker:  # a lone surrogate as JSON escapes it: json.dumps cannot write one on its own
        text = text.replace(f'"{marker}"', '"job ' + rng.choice(_SURROGATES) + ' x"')
    return text.encode("utf-8")


def _bytes_mutation(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op == 2:
            del buf[pos:pos + rng.randrange(1, 64)]
        elif op == 3:
            buf = buf[:pos]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start:start + rng.randrange(1, 200)]
        else:
            buf[pos:pos] = rng.choice([b"\\ud800", b"\xed\xa0\x80", b"\x00", b"]]>", b"<!--", b"&#0;", b"\xef\xbb\xbf"])
    return bytes(buf)


_XML_TRICKS = [
    b'<?xml version="1.0"?><!DOCTYPE webhook [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;">]>'
    b"<webhook><id>&b;</id><action>JOB_END</action></webhook>",
    b'<?xml version="1.0"?><!DOCTYPE webhook [<!ENTITY x SYSTEM "file:///etc/passwd">]><webhook><id>&x;</id></webhook>',
    b'<?xml version="1.0" encoding="UTF-16"?><webhook/>',
    b"<webhook>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</webhook>",
    b'<webhook xmlns:x="urn:x"><x:id>1</x:id><action>JOB_END</action><job_instance><id>1</id></job_instance></webhook>',
    b"<webhook><id>\xff\xfe</id></webhook>",
    b"<webhook><![CDATA[" + b"x" * 1000 + b"]]></webhook>",
    b"<webhook><id>&#xD800;</id><action>JOB_END</action></webhook>",
]


def _random_body(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 3000))
    if kind == 1:
        return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(0, 500))).encode("utf-8", "replace")
    if kind == 2:
        return rng.choice([b"", b" ", b"\n", b"\xef\xbb\xbf", b"null", b"[]", b"{}", b"1e999", b'"x"', b"<", b"<a"])
    if kind == 3:
        return b"[" * rng.randrange(1000, 200_000)
    if kind == 4:
        return b'{"id": "1", "action": "JOB_END", "x": "' + b"a" * (1024 * 1024) + b'"}'  # over the limit
    return rng.choice(_XML_TRICKS)


def webhook_bodies(seed: int, count: int) -> Iterator[tuple[bytes, bool]]:
    """`count` seeded (body, signed) pairs: about 40% structurally mutated JSON, 20% byte-mutated
    JSON, 20% mutated XML, 20% random or adversarial; half of them signed."""
    rng = random.Random(seed)
    sample = json.loads((EVENTS / "job_end.json").read_bytes())
    json_body = (EVENTS / "job_end.json").read_bytes()
    xml_body = (EVENTS / "job_end.xml").read_bytes()
    for _ in range(count):
        roll = rng.random()
        if roll < 0.4:
            body = _json_mutation(rng, sample)
        elif roll < 0.6:
            body = _bytes_mutation(rng, json_body)
        elif roll < 0.8:
            body = _bytes_mutation(rng, xml_body) if rng.random() < 0.8 else rng.choice(_XML_TRICKS)
        else:
            body = _random_body(rng)
        yield body, rng.random() < 0.5


# -- MARC ------------------------------------------------------------------------------------------------


def marc_samples() -> dict[str, bytes]:
    """The sample export in the three input formats, the two others written by pymarc (not our code)."""
    import io

    import pymarc

    xml = (EXPORTS / "BIBS_nightly_8816243980004146_1.xml").read_bytes()
    records = pymarc.parse_xml_to_array(io.BytesIO(xml))[:20]
    marc21 = b"".join(r.as_marc() for r in records)
    lines = b"".join(r.as_json().encode("utf-8") + b"\n" for r in records)
    xml = b"".join([b"<collection xmlns=\"http://www.loc.gov/MARC21/slim\">", *map(pymarc.record_to_xml, records),
                   b"</collection>"])
    return {"xml": xml, "mrc": marc21, "json": lines}


def _structural_marc21(rng: random.Random, data: bytes) -> bytes:
    """Lie in the places a MARC 21 reader trusts: record length, base address, directory entries."""
    records = [r + b"\x1d" for r in data.split(b"\x1d") if r]
    i = rng.randrange(len(records))
    rec = bytearray(records[i])
    where = rng.choice([(0, 5), (12, 17), (24 + 12 * rng.randrange(4), 24 + 12 * rng.randrange(4) + 12)])
    rec[where[0]:where[1]] = rng.choice([b"99999", b"00000", b"abcde", b"-0001", b"     ", b"000000000000"])[
        : where[1] - where[0]]
    records[i] = bytes(rec)
    return b"".join(records)


def _structural_json(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    depth = rng.choice([10, 1000, 100_000])
    lines[i] = rng.choice([
        b'{"leader": "00000nam a2200000 a 4500", "fields": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"leader": 5, "fields": {}}',
        b'{"leader": "x", "fields": [{"245": {"subfields": [{"a": ["nested"]}]}}]}',
        b'{"leader": "00000nam a2200000 a 4500", "fields": [{"001": "\\ud800"}]}',
        b"[]",
    ])
    return b"\n".join(lines)


def _structural_xml(rng: random.Random, data: bytes) -> bytes:
    return rng.choice([
        data.replace(b"<record>", b"<record>" + b"<x>" * 3000 + b"</x>" * 3000, 1),
        data.replace(b"<record>", b"<record><leader>&#x0;</leader>", 1),
        b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        + data[data.find(b"<collection"):],
        data.replace(b'tag="245"', b'tag="24\xff"', 1),
        data.replace(b"</record>", b"", 1),
    ])


def marc_inputs(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """`count` seeded (file name, bytes): each a sample format, mutated structurally or byte-wise."""
    rng = random.Random(seed)
    samples = marc_samples()
    structural = {"mrc": _structural_marc21, "json": _structural_json, "xml": _structural_xml}
    for n in range(count):
        ext = ("mrc", "xml", "json")[n % 3]
        data = samples[ext]
        data = structural[ext](rng, data) if rng.random() < 0.4 else _bytes_mutation(rng, data)
        if rng.random() < 0.3:
            data = _bytes_mutation(rng, data)
        yield f"fuzz_{n}.{ext}", data
