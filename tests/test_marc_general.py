"""The general path's shortcuts (parse -> rules -> encode, used whenever rules apply) give exactly the
bytes and rejects of the plain code: the MARCXML writer's reuse of parsed field text, the pattern
parser's usual-shape alternative (against lxml), on generated and hostile inputs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import marcgen
import pytest
from test_marc_passthrough import marcxml_samples, mutate

from pipeline.destinations.local import LocalDestination
from pipeline.marc import marcxml
from pipeline.marc.engine import Input, process_file
from pipeline.marc.record import Field, Record, RecordError
from pipeline.rules import load_rules

UTF8 = ("UTF-8", b"")
MARC_NS = ("UTF-8", b' xmlns:marc="http://www.loc.gov/MARC21/slim"')
ROOT = Path(__file__).resolve().parents[1]
DISCOVERY = ROOT / "samples" / "rules" / "discovery-cleanup.yaml"


def hostile_marcxml(n: int = 3000, seed: int = 11) -> list[bytes]:
    """Writer-form, Alma-form and prefixed records, hand-made oddities and random mutants of them."""
    samples = marcxml_samples()
    recs = marcgen.records(40, seed=seed)
    samples += marcgen.marcxml_bytes(recs, namespace=False).splitlines()[2:-1]
    c = samples[0]
    samples += [
        c.replace(b'<subfield code="a">', b'<subfield code="a">&gt;x&lt;&amp;', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">x&quot;y', 1),
        c.replace(b'<subfield code="a">', b"<subfield code='a'>", 1),
        c.replace(b'<subfield code="a">', b'<subfield  code="a">', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="ab">', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="\xc3\xa9">', 1),
        c.replace(b"</subfield><subfield", b"</subfield> <subfield", 1),
        c.replace(b"</subfield><subfield", b"</subfield>\n<subfield", 1),
        c.replace(b'ind1=" " ind2=" "', b'ind2=" " ind1=" "', 1),
        c.replace(b'ind1=" "', b'ind1="&gt;"', 1),
        c.replace(b'ind1=" "', b'ind1=">"', 1),
        c.replace(b'ind1=" "', b'ind1="\xc3\xa9"', 1),
        c.replace(b'ind1=" "', b'ind1="ab"', 1),
        c.replace(b'tag="245"', b'tag="24"', 1),
        c.replace(b'tag="245"', b'tag="2&amp;5"', 1),
        c.replace(b'ind2=" ">', b'ind2=" " >', 1),
        c.replace(b"</datafield>", b"</datafield >", 1),
        c.replace(b"<datafield", b"<datafield x=\"1\"", 1),
    ]
    rng = random.Random(seed)
    base = list(samples)
    alphabet = b'<>&";/= \t\n\x01\x1f\xc3\xa9\xffamplgtquosdfielcb#0123456789'
    samples += [mutate(rng.choice(base), rng, alphabet) for _ in range(n)]
    return samples


_NEW_PATTERNS = marcxml._fast_patterns


def old_patterns(prefix: str) -> tuple:
    """The pattern parser's patterns without the usual-shape alternative (it never matches here):
    the parser as it was before that alternative existed."""
    field, sub = _NEW_PATTERNS(prefix)
    usual, rest = field.pattern.split("|", 1)
    assert usual.startswith(f"<{prefix}datafield tag=")
    return re.compile("(?!)()()()()|" + rest, field.flags), sub


def test_pattern_parser_same_records_as_before_on_hostile_input(monkeypatch):
    samples = hostile_marcxml()
    new = [marcxml._fast_record(raw, {}) for raw in samples]
    monkeypatch.setattr(marcxml, "_fast_patterns", old_patterns)
    old = [marcxml._fast_record(raw) for raw in samples]
    assert new == old
    assert sum(r is not None for r in new) > 500
    # and where lxml reads the record too, it reads the same
    for raw, rec in zip(samples[:200], new[:200], strict=True):
        if rec is not None:
            assert [rec] == marcxml._parse_lxml(MARC_NS, [raw])


def edit(record: Record, rng: random.Random) -> None:
    """What rules and plugins do to parsed fields: in place, by replacing, equal or not."""
    for f in list(record.fields):
        if f.subfields is None:
            continue
        choice = rng.random()
        if choice < 0.1:
            f.subfields.append(("z", "added > & <"))
        elif choice < 0.2 and f.subfields:
            c, v = f.subfields[0]
            f.subfields[0] = (c, v + "!")
        elif choice < 0.3:
            f.subfields = [(c, v) for c, v in f.subfields]  # equal, but new objects
        elif choice < 0.35:
            f.subfields = []
        elif choice < 0.4:
            f.ind1, f.tag = "9", "599"
        elif choice < 0.45:
            record.fields.remove(f)
        elif choice < 0.5:
            record.fields.append(f.copy())
        elif choice < 0.52:
            f.subfields = None
            f.value = "now a control field"
        elif choice < 0.55 and f.subfields:
            f.subfields[-1] = (f.subfields[-1][0], f.subfields[-1][1].replace("a", "\x01"))
        elif choice < 0.6:
            f.subfields = tuple(f.subfields)  # type: ignore[assignment]
    if rng.random() < 0.3:
        record.fields.sort(key=lambda f: f.tag)


def test_writer_reuses_parsed_text_only_where_it_is_exact():
    rng = random.Random(12)
    rules = load_rules(DISCOVERY)
    fragments: marcxml.Fragments = {}
    raws = hostile_marcxml(1500, seed=13)
    records = [marcxml._fast_record(raw, fragments) for raw in raws]
    assert len(fragments) > 10_000
    reused = 0
    for record in records:
        if record is None:
            continue
        if rng.random() < 0.5:
            try:
                record = rules(record)
            except RecordError:
                continue
            if record is None:
                continue
        if rng.random() < 0.5:
            edit(record, rng)
        plain, reusing = marcxml.MarcXmlEncoder(), marcxml.MarcXmlEncoder()
        try:
            expected: bytes | str = _plain_encode(plain, record)
        except Exception as exc:  # the same failure either way
            expected = repr(exc)
        try:
            got: bytes | str = reusing.encode_reusing(record, fragments)
        except Exception as exc:
            got = repr(exc)
        assert got == expected
        assert plain.counters == reusing.counters
        reused += any(id(f) in fragments for f in record.fields)
    assert reused > 200


def test_writer_without_fragments_is_unchanged():
    rec = Record("00000nam a2200000 i 4500", [Field.control("001", "1"), Field("245", "1", "0", [("a", "x > y")])])
    assert marcxml.MarcXmlEncoder().encode_reusing(rec, None) == marcxml.MarcXmlEncoder().encode(rec)


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_marcxml_with_rules_same_bytes_without_reuse(tmp_path, monkeypatch, workers):
    from pipeline.marc import engine

    monkeypatch.setattr(engine, "BATCH_RECORDS", 16)
    samples = [s for s in hostile_marcxml(400, seed=14) if b"\r" not in s]
    samples = [m for m in samples if m.startswith(b"<record") and m.endswith(b"</record>")
               and m.count(b"<record") == 1 and m.count(b"</record") == 1 and b"<!" not in m and b"<?" not in m
               and b"<marc:" not in m]
    src = tmp_path / "in.xml"
    src.write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n<collection>\n' + b"\n".join(samples)
                    + b"\n</collection>\n")

    def run(out: str) -> tuple:
        r = process_file(Input.from_path(src), LocalDestination(tmp_path / out), fmt="marcxml",
                         rules_path=str(DISCOVERY), workers=workers)
        return r.records_in, r.records_out, r.rejected, r.dropped, r.counters, r.error

    fast = run("fast")
    monkeypatch.setattr(marcxml.MarcXmlEncoder, "encode_reusing",
                        lambda self, record, fragments: marcxml.MarcXmlEncoder.encode(self, record))
    monkeypatch.setattr(marcxml.MarcXmlEncoder, "encode", _plain_encode)
    slow = run("slow")
    assert fast == slow
    assert fast[2] > 0  # some rejects
    names = sorted(p.name for p in (tmp_path / "slow").iterdir() if p.name != "report.json")
    assert names == sorted(p.name for p in (tmp_path / "fast").iterdir() if p.name != "report.json")
    for name in names:
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes(), name


def _plain_encode(self: marcxml.MarcXmlEncoder, record: Record) -> bytes:
    """MarcXmlEncoder.encode with no fragments at all (what the writer did before reuse existed)."""
    self._check(record)
    text = self._text(record, None)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = b""
    if not data or marcxml.has_illegal_bytes(data):
        text, removed = marcxml._ILLEGAL.subn("", text)
        self.counters["control_chars_removed"] += removed
        data = text.encode("utf-8")
    return data + b"\n"
