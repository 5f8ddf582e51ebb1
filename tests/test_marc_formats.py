"""Readers and writers: round trips, MARC-8, bad records, limits, control characters, XSLT, JSON."""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import marcgen
import pytest
from lxml import etree

from pipeline.destinations.local import LocalDestination
from pipeline.marc import marc21, marcxml
from pipeline.marc.encoders import FormatError, get_encoder
from pipeline.marc.engine import Input, process_file
from pipeline.marc.marc8 import Marc8Error, decode_marc8
from pipeline.marc.record import Field, Record, RecordError

NS = {"m": marcxml.NS}


def run(path: Path, out: Path, fmt: str = "marcxml", **kw):
    return process_file(Input.from_path(path), LocalDestination(out), fmt=fmt, workers=1, **kw)


def read_xml(path: Path) -> list[Record]:
    root = etree.parse(str(path)).getroot()
    return [marcxml.element_to_record(el) for el in root]


def read_mrc(path: Path) -> list[Record]:
    data = path.read_bytes()
    return [marc21.parse_marc21(chunk + b"\x1d") for chunk in data.split(b"\x1d")[:-1]]


def same_but_lengths(a: Record, b: Record) -> bool:
    """Equal except the leader positions a writer recomputes (00-04 length, 09 coding, 12-16 base)."""
    def norm(leader: str) -> str:
        return leader[5:9] + leader[10:12] + leader[17:]
    return norm(a.leader) == norm(b.leader) and a.fields == b.fields


def test_marcxml_marc21_marcxml_round_trip_keeps_everything(tmp_path):
    recs = marcgen.records(300, seed=1)
    src = marcgen.write_marcxml(tmp_path / "export.xml", recs, namespace=False)
    r1 = run(src, tmp_path / "a", "marc21")
    assert (r1.records_in, r1.records_out, r1.rejected, r1.error) == (300, 300, 0, None)
    r2 = run(tmp_path / "a" / "export.mrc", tmp_path / "b", "marcxml")
    assert r2.records_out == 300
    back = read_xml(tmp_path / "b" / "export.xml")
    assert len(back) == 300
    assert all(same_but_lengths(x, y) for x, y in zip(back, recs, strict=True))
    assert all(r.leader[9] == "a" for r in back)
    # the binary file is what an independent writer produces for the same records
    assert (tmp_path / "a" / "export.mrc").read_bytes() == marcgen.marc21_bytes(
        [Record(r.leader[:9] + "a" + r.leader[10:], r.fields) for r in recs])


@pytest.mark.parametrize("style", ["plain", "namespaced", "prefixed"])
def test_fast_path_and_lxml_agree(style):
    recs = marcgen.records(120, seed=2)
    data = marcgen.marcxml_bytes(recs, namespace=style == "namespaced", prefix="marc" if style == "prefixed" else None)
    framer = marcxml.XmlFramer(io.BytesIO(data))
    raws = [f.raw for f in framer.frames()]
    fast = [marcxml._fast_record(raw) for raw in raws]
    slow = marcxml._parse_lxml(framer.context(), raws)
    assert all(f is not None for f in fast), "plain generated records take the fast path"
    assert fast == slow == recs


def test_unusual_but_valid_xml_goes_through_lxml():
    raw = (b'<record><!-- note --><leader>00000nam a2200000 i 4500</leader>'
           b'<controlfield tag="001">99&#49;23</controlfield>'
           b'<datafield ind1="1" ind2="0" tag="245"><subfield code="a"><![CDATA[A & B <c>]]></subfield>'
           b'<subfield code="b">caf\xc3\xa9 &amp; cr\xc3\xa8me</subfield></datafield></record>')
    assert marcxml._fast_record(raw) is None
    [rec] = marcxml.parse_marcxml_batch(("UTF-8", b""), [raw])
    assert rec.fields[0].value == "99123"
    assert rec.fields[1].subfields == [("a", "A & B <c>"), ("b", "café & crème")]
    assert (rec.fields[1].ind1, rec.fields[1].ind2) == ("1", "0")


def test_marc8_converts_to_the_same_text_as_its_utf8_twin(tmp_path):
    recs = marcgen.records(80, seed=3, marc8_safe=True)
    assert any(any("\u4e00" <= ch <= "\u9fff" for f in r.fields for _, v in f.subfields or () for ch in v)
               for r in recs), "the sample holds CJK"
    m8 = marcgen.write_marc21(tmp_path / "m8.mrc", recs, marc8=True)
    u8 = marcgen.write_marc21(tmp_path / "u8.mrc", recs)
    assert m8.read_bytes() != u8.read_bytes()
    assert m8.read_bytes()[9:10] == b" "
    r8, ru = run(m8, tmp_path / "o8"), run(u8, tmp_path / "ou")
    assert r8.records_out == ru.records_out == 80 and r8.rejected == 0
    from_marc8, from_utf8 = read_xml(tmp_path / "o8" / "m8.xml"), read_xml(tmp_path / "ou" / "u8.xml")
    assert all(same_but_lengths(x, y) for x, y in zip(from_marc8, from_utf8, strict=True))
    assert all(r.leader[9] == "a" for r in from_marc8)
    nfc = [Record(r.leader, [Field(f.tag, f.ind1, f.ind2, None if f.subfields is None else
                                   [(c, unicodedata.normalize("NFC", v)) for c, v in f.subfields], f.value)
                             for f in r.fields]) for r in recs]
    assert all(same_but_lengths(x, y) for x, y in zip(from_marc8, nfc, strict=True))


def test_marc8_decoder_names_undecodable_bytes():
    assert decode_marc8(b"\xe2e") == "é"
    assert decode_marc8(b"caf\xe2e \x1b$1\x21\x30\x34\x1b(B!") == "café 中!"
    with pytest.raises(Marc8Error, match="0xFF"):
        decode_marc8(b"abc\xff")
    with pytest.raises(Marc8Error, match="escape"):
        decode_marc8(b"abc\x1b")


def test_undecodable_record_is_rejected_not_blanked(tmp_path):
    recs = marcgen.records(5, seed=4, marc8_safe=True)
    blobs = [marcgen.marc21_record(r, marc8=True) for r in recs]
    bad = blobs[2].replace(b"\x1faby ", b"\x1fa\xff\xffby ", 1) if b"\x1faby " in blobs[2] else None
    if bad is None:  # put an unmappable byte into the 245 of record 2
        rec = recs[2]
        rec.fields[8].subfields[0] = ("a", "Title ")
        bad = marcgen.marc21_record(rec, marc8=True).replace(b"\x1faTitle ", b"\x1faTitle\xff")
    src = tmp_path / "mixed.mrc"
    src.write_bytes(b"".join(blobs[:2]) + bad + b"".join(blobs[3:]))
    result = run(src, tmp_path / "out")
    assert (result.records_out, result.rejected) == (4, 1)
    [entry] = [json.loads(line) for line in (tmp_path / "out" / "mixed.rejects.jsonl").read_text().splitlines()]
    assert entry["index"] == 2 and entry["stage"] == "read"
    assert "neither UTF-8 nor MARC-8" in entry["error"] and "0xFF" in entry["error"]
    assert entry["id"] == recs[2].id
    assert (tmp_path / "out" / "mixed.rejects.mrc").read_bytes() == bad


def test_corrupt_length_in_the_middle_costs_only_that_record(tmp_path):
    recs = marcgen.records(50, seed=5)
    blobs = [marcgen.marc21_record(r) for r in recs]
    blobs[20] = b"99999" + blobs[20][5:]  # wrong record length: pymarc would stop reading here
    # a broken directory in another record: the data cannot be matched to its tags
    blobs[30] = blobs[30][:48] + b"\xff" + blobs[30][49:]
    src = tmp_path / "broken.mrc"
    src.write_bytes(b"".join(blobs))
    result = run(src, tmp_path / "out", "marc21")
    assert result.records_in == 50
    assert result.records_out == 49 and result.rejected == 1
    out = read_mrc(tmp_path / "out" / "broken.mrc")
    ids = [r.id for r in out]
    assert recs[20].id in ids and recs[30].id not in ids and len(ids) == 49
    [entry] = [json.loads(x) for x in (tmp_path / "out" / "broken.rejects.jsonl").read_text().splitlines()]
    assert entry["index"] == 30 and entry["offset"] == sum(len(b) for b in blobs[:30])
    assert entry["id"] == recs[30].id and "directory" in entry["error"]


def test_truncated_last_record_and_padding(tmp_path):
    blobs = [marcgen.marc21_record(r) for r in marcgen.records(3, seed=6)]
    src = tmp_path / "t.mrc"
    src.write_bytes(blobs[0] + b"\r\n" + blobs[1] + b"\n\x00" + blobs[2][:-40])
    result = run(src, tmp_path / "out")
    assert (result.records_out, result.rejected) == (2, 1)
    entry = json.loads((tmp_path / "out" / "t.rejects.jsonl").read_text())
    assert "no terminator" in entry["error"]


def test_oversized_record_rejected_from_marc21_kept_in_marcxml(tmp_path):
    recs = marcgen.records(3, seed=7)
    recs.insert(1, marcgen.huge_record())
    src = marcgen.write_marcxml(tmp_path / "big.xml", recs)
    r21 = run(src, tmp_path / "mrc", "marc21")
    assert (r21.records_out, r21.rejected) == (3, 1)
    entry = json.loads((tmp_path / "mrc" / "big.rejects.jsonl").read_text())
    assert entry["stage"] == "write" and "99,999" in entry["error"] and entry["index"] == 1
    assert entry["id"] == recs[1].id
    assert [r.id for r in read_mrc(tmp_path / "mrc" / "big.mrc")] == [recs[i].id for i in (0, 2, 3)]
    rejected = etree.parse(str(tmp_path / "mrc" / "big.rejects.xml")).getroot()  # well-formed, original form
    assert [marcxml.element_to_record(el) for el in rejected] == [recs[1]]
    rx = run(src, tmp_path / "xml", "marcxml")
    assert (rx.records_out, rx.rejected) == (4, 0)
    assert read_xml(tmp_path / "xml" / "big.xml")[1] == recs[1]


def test_marc21_writer_enforces_field_limit_and_delimiters():
    enc = get_encoder("marc21")
    rec = marcgen.records(1, seed=8)[0]
    rec.fields.append(Field("500", " ", " ", [("a", "x" * 10_000)]))
    with pytest.raises(RecordError, match="field 500 is 10,00"):
        enc.encode(rec)
    rec.fields[-1] = Field("500", " ", " ", [("a", "bad\x1fdelimiter")])
    with pytest.raises(RecordError, match="delimiter"):
        enc.encode(rec)
    rec.fields[-1] = Field("500", " ", " ", [("ab", "two-letter code")])
    with pytest.raises(RecordError, match="'ab'"):
        enc.encode(rec)
    rec.fields[-1] = Field("5000", " ", " ", [("a", "x")])
    with pytest.raises(RecordError, match="5000"):
        enc.encode(rec)


def test_control_characters_removed_and_counted(tmp_path):
    recs = marcgen.records(4, seed=9)
    # (not ESC: in binary MARC that means MARC-8, see test_marc_realworld)
    recs[1].fields[8].subfields[0] = ("a", "Bad\x01 title\x0b with controls\x1c")
    src = marcgen.write_marc21(tmp_path / "ctl.mrc", recs)
    result = run(src, tmp_path / "out", "marcxml")
    assert result.records_out == 4 and result.counters == {"control_chars_removed": 3}
    back = read_xml(tmp_path / "out" / "ctl.xml")  # lxml would refuse the file if any were left
    assert back[1].fields[8].subfields[0] == ("a", "Bad title with controls")
    assert result.to_dict()["control_chars_removed"] == 3


def test_json_lines_round_trip_and_bad_line(tmp_path):
    recs = marcgen.records(20, seed=10)
    lines = marcgen.json_bytes(recs).splitlines(keepends=True)
    lines.insert(5, b'{"leader": "broken", "fields": [\n')
    lines.insert(9, b'{"leader": "00000nam a2200000 i 4500", "fields": "nope"}\n')
    src = tmp_path / "recs.json"
    src.write_bytes(b"".join(lines))
    result = run(src, tmp_path / "out", "json")
    assert (result.input_format, result.records_out, result.rejected) == ("json", 20, 2)
    back = [json.loads(line) for line in (tmp_path / "out" / "recs.json").read_text().splitlines()]
    assert back == [json.loads(marcgen.json_line(r)) for r in recs]
    assert (tmp_path / "out" / "recs.rejects.json").read_bytes() == lines[5] + lines[9]


XSL = """<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:m="http://www.loc.gov/MARC21/slim" exclude-result-prefixes="m">
  <xsl:template match="/m:record">
    <xsl:if test="m:controlfield[@tag='001'] = 'FAIL'"><xsl:message terminate="yes">no</xsl:message></xsl:if>
    <doc><id><xsl:value-of select="m:controlfield[@tag='001']"/></id>
    <title><xsl:value-of select="m:datafield[@tag='245']/m:subfield[@code='a']"/></title></doc>
  </xsl:template>
</xsl:stylesheet>"""


def test_xslt_per_record_with_root(tmp_path):
    xsl = tmp_path / "doc.xsl"
    xsl.write_text(XSL)
    recs = marcgen.records(10, seed=11)
    recs[4].fields[0].value = "FAIL"
    src = marcgen.write_marcxml(tmp_path / "in.xml", recs, namespace=False)
    result = process_file(Input.from_path(src), LocalDestination(tmp_path / "out"), fmt=f"xslt:{xsl}",
                          encoder_options={"root": "docs"}, workers=1)
    assert (result.records_out, result.rejected) == (9, 1)
    root = etree.parse(str(tmp_path / "out" / "in.xml")).getroot()
    assert root.tag == "docs" and len(root) == 9
    assert root[0].findtext("id") == recs[0].id
    assert root[0].findtext("title") == recs[0].fields[8].subfields[0][1]
    assert "XSLT failed" in (tmp_path / "out" / "in.rejects.jsonl").read_text()


def test_bad_formats_are_usage_errors(tmp_path):
    with pytest.raises(FormatError, match="unknown output format"):
        get_encoder("pdf")
    with pytest.raises(FormatError, match="does not exist"):
        get_encoder(f"xslt:{tmp_path}/missing.xsl")
    (tmp_path / "bad.xsl").write_text("<xsl:stylesheet")
    with pytest.raises(FormatError, match="cannot be used"):
        get_encoder(f"xslt:{tmp_path}/bad.xsl")
    with pytest.raises(FormatError, match="root"):
        get_encoder(f"xslt:{tmp_path}/bad.xsl", root="not a name")
    with pytest.raises(FormatError, match="takes no options"):
        get_encoder("marcxml", root="x")
