"""The eight kinds of silent change issue #10 found in real files, each on a record written here
(bytes laid out by hand, not by our writer), read back by pymarc as the independent reader.

1 MARC-8 escapes in an all-ASCII record   2 a directory not in data order   3 non-ASCII indicators
4 multi-byte subfield codes   5 the MARC-8 set leaking into subfield codes   6 leaders that are not
24 characters   7 a subfield with no code   8 00X data fields through MARC 21 and back.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pymarc
import pytest
from pymarc.marc8 import MARC8ToUnicode
from pymarc.marc8_mapping import CODESETS

from pipeline.destinations.local import LocalDestination
from pipeline.jobs import manifest, merge_parts
from pipeline.ledger import FileState, JobRecord
from pipeline.marc import marc21
from pipeline.marc.engine import Input, process, process_file
from pipeline.marc.record import Field, Record

ESC = b"\x1b"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?><collection xmlns="http://www.loc.gov/MARC21/slim">'


def iso2709(fields: list[tuple[str, bytes]], *, leader9: bytes = b" ", order: list[int] | None = None,
            lengths: dict[int, int] | None = None) -> bytes:
    """One ISO 2709 record laid out by hand: `fields` as (tag, data without terminator); the data
    area holds them in `order` (default: as listed) while the directory lists them as given."""
    order = order if order is not None else list(range(len(fields)))
    offsets, data = {}, b""
    for i in order:
        offsets[i] = len(data)
        data += fields[i][1] + b"\x1e"
    directory = b"".join(b"%s%04d%05d" % (tag.encode(), (lengths or {}).get(i, len(value) + 1) if lengths
                                          else len(value) + 1, offsets[i])
                         for i, (tag, value) in enumerate(fields))
    base = 24 + len(directory) + 1
    total = base + len(data) + 1
    leader = b"%05dnam %s22%05d   4500" % (total, leader9, base)
    return leader + directory + b"\x1e" + data + b"\x1d"


def run(tmp_path: Path, name: str, data: bytes, fmt: str):
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / f"out-{fmt}-{name}"
    result = process_file(Input.from_path(src), LocalDestination(out), fmt=fmt, workers=1)
    rejects = []
    for o in result.outputs:
        if o.extra.get("kind") == "rejects-log":
            rejects = [json.loads(line) for line in Path(o.path).read_text("utf-8").splitlines()]
    records = next(Path(o.path) for o in result.outputs if o.extra.get("kind", "records") == "records")
    return result, records, rejects


def pymarc_read(path: Path, fmt: str) -> list[pymarc.Record]:
    if fmt == "marcxml":
        return pymarc.parse_xml_to_array(str(path), strict=True)
    if fmt == "json":
        return [r for line in path.read_text("utf-8").splitlines() for r in pymarc.JSONReader(line)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return list(pymarc.MARCReader(path.read_bytes(), to_unicode=True))


def subfields(record: pymarc.Record, tag: str) -> list[tuple[str, str]]:
    return [(s.code, s.value) for s in record.get_fields(tag)[0].subfields]


def eacc(char: str) -> bytes:
    """The EACC (MARC-8 CJK) bytes of `char`, from LoC's table as pymarc ships it."""
    code = next(k for k, (uni, _) in CODESETS[0x31].items() if uni == ord(char))
    return code.to_bytes(3, "big")


BASE = [("001", b"rw-1"), ("008", b"960213s1996    flu           000 0 eng  ")]


# 1 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("leader9", [b" ", b"a"])
def test_1_marc8_escapes_in_an_ascii_record_are_decoded(tmp_path, leader9):
    cjk = ESC + b"$1" + eacc("\u9648") + ESC + b"(B"  # 陈, switched in and back
    record = iso2709([*BASE, ("500", b"  \x1faSignatures: A" + ESC + b"p4" + ESC + b"s B" + ESC + b"p2" + ESC + b"s"),
                      ("880", b"1 \x1f6100-01/$1\x1fa" + cjk + b" x.")], leader9=leader9)
    assert record.isascii()  # what made it pass as UTF-8 before
    for fmt in ("marcxml", "marc21", "json"):
        result, out, rejects = run(tmp_path, f"m8{leader9.decode()}.mrc", record, fmt)
        assert (result.records_out, rejects, result.counters) == (1, [], {}), fmt
        back = pymarc_read(out, fmt)[0]
        assert subfields(back, "500") == [("a", "Signatures: A\u2074 B\u00b2")]
        assert subfields(back, "880") == [("6", "100-01/$1"), ("a", "\u9648 x.")]


def test_1_a_broken_escape_rejects_the_record_with_its_reason_and_bytes(tmp_path):
    record = iso2709([*BASE, ("245", b"10\x1faTitle " + ESC + b"$1" + b"\x21")])  # EACC cut short
    result, _, rejects = run(tmp_path, "bad.mrc", record, "marcxml")
    assert result.rejected == 1 and rejects[0]["reason"] == "marc8-undecodable" and "245" in rejects[0]["error"]
    assert (tmp_path / "out-marcxml-bad.mrc" / "bad.rejects.mrc").read_bytes() == record


# 2 ------------------------------------------------------------------------------------------------
def test_2_fields_follow_the_directory_not_the_data_order(tmp_path):
    fields = [*BASE, ("020", b"  \x1fa9781561457953"), ("245", b"10\x1faRight title"), ("336", b"  \x1fatext")]
    record = iso2709(fields, order=[4, 3, 0, 2, 1])
    for fmt in ("marcxml", "marc21", "json"):
        result, out, _ = run(tmp_path, "unordered.mrc", record, fmt)
        assert result.records_out == 1 and "salvaged_directory_fallback" not in result.counters
        back = pymarc_read(out, fmt)[0]
        expected = pymarc.Record(record, force_utf8=True)  # pymarc follows the directory too
        assert [f.tag for f in back.fields] == ["001", "008", "020", "245", "336"]
        assert subfields(back, "020") == subfields(expected, "020") == [("a", "9781561457953")]
        assert subfields(back, "336") == [("a", "text")]


def test_2_an_inconsistent_directory_is_salvaged_and_counted(tmp_path):
    # lengths counted in characters, not bytes (Boston University's Alma export): entries miss the terminators
    fields = [*BASE, ("245", "10\x1faPétain et Vichy".encode()), ("500", b"  \x1faNote")]
    record = iso2709(fields, leader9=b"a", lengths={2: len("10\x1faPétain et Vichy") + 1})
    result, out, _ = run(tmp_path, "chars.mrc", record, "marcxml")
    assert result.records_out == 1 and result.counters["salvaged_directory_fallback"] == 1
    back = pymarc_read(out, "marcxml")[0]
    assert subfields(back, "245") == [("a", "Pétain et Vichy")] and subfields(back, "500") == [("a", "Note")]
    report = process([Input.from_path(tmp_path / "chars.mrc")], LocalDestination(tmp_path / "r"), workers=1)
    assert report.to_dict()["files"][0]["salvaged_directory_fallback"] == 1


# 3 ------------------------------------------------------------------------------------------------
def test_3_non_ascii_indicators_are_kept_where_the_format_holds_them_and_refused_in_marc21(tmp_path):
    xml = (XML_HEAD + '<record><leader>00000nam a2200000 i 4500</leader><controlfield tag="001">p1</controlfield>'
           '<datafield tag="700" ind1="1" ind2="§"><subfield code="a">Name</subfield></datafield></record>'
           "</collection>").encode()
    result, _, rejects = run(tmp_path, "ind.xml", xml, "marc21")
    assert result.records_out == 0 and rejects[0]["reason"] == "marc21-indicator-invalid"
    assert "700" in rejects[0]["error"] and "'§'" in rejects[0]["error"]
    result, out, _ = run(tmp_path, "ind.xml", xml, "marcxml")
    assert pymarc_read(out, "marcxml")[0].get_fields("700")[0].indicator2 == "§"
    # a MARC-8 record's indicator byte is read in the default sets, never through an escape
    record = iso2709([*BASE, ("082", b"\xb2 \x1fa155.4/23")])
    result, _, rejects = run(tmp_path, "ind.mrc", record, "marc21")
    assert rejects[0]["reason"] == "marc21-indicator-invalid"


# 4 ------------------------------------------------------------------------------------------------
def test_4_subfield_codes_must_be_one_ascii_byte_in_marc21(tmp_path):
    xml = (XML_HEAD + "".join(
        f'<record><leader>00000nam a2200000 i 4500</leader><controlfield tag="001">{i}</controlfield>'
        f'<datafield tag="985" ind1=" " ind2=" "><subfield code="{code}">x</subfield></datafield></record>'
        for i, code in enumerate(["aa", "aa", "á", "a"])) + "</collection>").encode()
    (tmp_path / "codes.xml").write_bytes(xml)
    report = process([Input.from_path(tmp_path / "codes.xml")], LocalDestination(tmp_path / "r"), fmt="marc21",
                     workers=1)
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    assert summary["totals"]["rejected_by_reason"] == {"marc21-subfield-code-length": 2,
                                                       "marc21-subfield-code-not-ascii": 1}
    assert report.files[0].records_out == 1
    # a UTF-8 binary record with a two-byte code is read as it is (like yaz) and not copied through
    record = iso2709([*BASE, ("245", "10\x1fáTitle".encode())], leader9=b"a")
    assert marc21.passthrough_marc21(record) is None
    assert marc21.parse_marc21(record).fields[2].subfields == [("á", "Title")]
    result, _, rejects = run(tmp_path, "code.mrc", record, "marc21")
    assert rejects[0]["reason"] == "marc21-subfield-code-not-ascii"


# 5 ------------------------------------------------------------------------------------------------
def test_5_subfield_codes_are_bytes_and_each_subfield_starts_in_the_default_sets(tmp_path):
    value = b"1 \x1fa" + ESC + b"(NMOSKWA :\x1fbSMO,\x1fc2013."  # Cyrillic in $a, never switched back
    record = iso2709([*BASE, ("880", value)])
    expected = [(part[:1].decode(), MARC8ToUnicode(quiet=True).translate(part[1:]))
                for part in value.split(b"\x1f")[1:]]
    assert [c for c, _ in expected] == ["a", "b", "c"] and expected[1][1] == "SMO,"
    for fmt in ("marcxml", "marc21", "json"):
        result, out, _ = run(tmp_path, "cyr.mrc", record, fmt)
        assert subfields(pymarc_read(out, fmt)[0], "880") == expected


# 6 ------------------------------------------------------------------------------------------------
def test_6_a_leader_that_is_not_24_characters_is_refused_by_every_writer(tmp_path):
    xml = (XML_HEAD + '<record><leader>00000nam a2200000 i 450</leader><controlfield tag="001">1</controlfield>'
           "</record></collection>").encode()
    for fmt in ("marcxml", "marc21", "json"):
        result, out, rejects = run(tmp_path, "short.xml", xml, fmt)
        assert result.records_out == 0 and rejects[0]["reason"] == "leader-length", fmt
        assert pymarc_read(out, fmt) == []  # the output file stays readable


def test_6_a_rules_file_can_repair_what_the_writers_refuse(tmp_path):
    """Liberal readers, rules between, strict writers: the rules see the record as read."""
    xml = (XML_HEAD + '<record><leader>00000nam a2200000 i 450</leader><controlfield tag="001">1</controlfield>'
           "</record></collection>").encode()
    (tmp_path / "short.xml").write_bytes(xml)
    (tmp_path / "pad.yaml").write_text('- set: {path: "LDR/23", value: "0"}\n')
    for fmt in ("marcxml", "marc21", "json"):
        result = process_file(Input.from_path(tmp_path / "short.xml"), LocalDestination(tmp_path / fmt), fmt=fmt,
                              rules_path=str(tmp_path / "pad.yaml"), workers=1)
        assert (result.records_out, result.rejected) == (1, 0), fmt
        out = next(Path(o.path) for o in result.outputs if o.extra.get("kind", "records") == "records")
        assert str(pymarc_read(out, fmt)[0].leader).endswith("4500"), fmt


def test_6_a_leader_short_of_a_removed_control_character_is_refused_in_marcxml_only(tmp_path):
    record = bytearray(iso2709([*BASE, ("245", b"10\x1faT")]))
    record[7] = 0x1C  # leader/07: a C0 control XML cannot hold
    result, _, rejects = run(tmp_path, "ctl.mrc", bytes(record), "marcxml")
    assert rejects[0]["reason"] == "leader-length" and "removing 1" in rejects[0]["error"]
    assert result.counters == {}
    for fmt in ("marc21", "json"):
        result, out, rejects = run(tmp_path, "ctl.mrc", bytes(record), fmt)
        assert result.records_out == 1 and rejects == []


# 7 ------------------------------------------------------------------------------------------------
def test_7_a_subfield_without_a_code_is_refused_everywhere(tmp_path):
    xml = (XML_HEAD + '<record><leader>00000nam a2200000 i 4500</leader><controlfield tag="001">1</controlfield>'
           '<datafield tag="020" ind1=" " ind2=" "><subfield>0679450041</subfield></datafield></record>'
           '<record><leader>00000nam a2200000 i 4500</leader><controlfield>no tag</controlfield></record>'
           "</collection>").encode()
    for fmt in ("marcxml", "marc21", "json"):
        result, _, rejects = run(tmp_path, "nocode.xml", xml, fmt)
        assert result.records_out == 0
        assert [(r["stage"], r["reason"]) for r in rejects] == [("write", "subfield-code-missing"),
                                                               ("read", "xml-tag-missing")], fmt
        assert "020" in rejects[0]["error"]


# 8 ------------------------------------------------------------------------------------------------
def test_8_00x_data_fields_come_back_from_marc21_unchanged(tmp_path):
    xml = (XML_HEAD + '<record><leader>00000nam a2200000 i 4500</leader>'
           '<datafield tag="001" ind1="0" ind2="0"><subfield code="a">9 181 423 4</subfield>'
           '<subfield code="f">a</subfield></datafield><controlfield tag="005">20240101</controlfield>'
           '<datafield tag="245" ind1="1" ind2="0"><subfield code="a">T</subfield></datafield></record>'
           "</collection>").encode()
    result, out, _ = run(tmp_path, "danmarc.xml", xml, "marc21")
    assert result.records_out == 1
    data = out.read_bytes()
    assert b"00\x1fa9 181 423 4\x1ffa\x1e" in data  # indicators and delimiters written, as yaz writes them
    back = marc21.parse_marc21(data)
    assert back.fields[0] == Field("001", "0", "0", [("a", "9 181 423 4"), ("f", "a")])
    assert back.fields[1] == Field.control("005", "20240101")
    # pymarc, which holds 00X only as control fields, sees the same bytes
    assert pymarc.Record(data).get_fields("001")[0].data == "00\x1fa9 181 423 4\x1ffa"
    result, again, _ = run(tmp_path, "danmarc.mrc", data, "marcxml")
    assert again.read_bytes().count(b'<datafield tag="001" ind1="0" ind2="0">') == 1


def test_8_what_marc21_could_not_give_back_is_refused():
    enc = marc21.Marc21Encoder()
    leader = "00000nam a2200000 i 4500"
    for field, reason in ((Field("001", "0", "0", []), "marc21-00x-data-field-empty"),
                          (Field.control("FMT", "BK"), "marc21-control-field-tag")):
        with pytest.raises(Exception) as info:
            enc.encode(Record(leader, [Field.control("005", "1"), field]))
        assert info.value.code == reason and field.tag in str(info.value)


# reasons in the job service's manifest ----------------------------------------------------------------
def test_reject_reasons_add_up_over_the_parts_of_a_continued_file():
    merged = merge_parts([{"records_in": 2, "rejected": 2, "rejected_by_reason": {"leader-length": 2}},
                           {"records_in": 3, "rejected": 2, "rejected_by_reason": {"leader-length": 1,
                                                                                   "utf8-invalid": 1}}])
    assert merged["rejected_by_reason"] == {"leader-length": 3, "utf8-invalid": 1}
    job = JobRecord("inst", files=[
        FileState("a", "done", result={"records_in": 5, "rejected": 4,
                                       "rejected_by_reason": merged["rejected_by_reason"]}),
        FileState("b", "done", result={"records_in": 1, "rejected": 1, "rejected_by_reason": {"utf8-invalid": 1}})])
    totals = manifest(job)["totals"]
    assert totals["rejected"] == 5 and totals["rejected_by_reason"] == {"leader-length": 3, "utf8-invalid": 2}


def test_pymarc_reads_every_output_of_a_mixed_file(tmp_path):
    """The strict writers leave files other readers accept whole (before, one bad record spoiled them)."""
    xml = (XML_HEAD + '<record><leader>00000nam a2200000 i 450</leader></record>'
           '<record><leader>00000nam a2200000 i 4500</leader><controlfield tag="001">ok</controlfield></record>'
           "</collection>").encode()
    for fmt in ("marcxml", "marc21", "json"):
        _, out, _ = run(tmp_path, "mixed.xml", xml, fmt)
        assert [r["001"].data for r in pymarc_read(out, fmt)] == ["ok"]


def test_the_records_are_read_by_pymarc_as_laid_out(tmp_path):
    """The hand-made layout is what an independent reader sees (the tests above rely on it)."""
    record = iso2709([*BASE, ("245", b"10\x1faT")])
    parsed = pymarc.Record(record, force_utf8=True)
    assert parsed["001"].data == "rw-1" and subfields(parsed, "245") == [("a", "T")]
    assert list(pymarc.MARCReader(io.BytesIO(record)))[0] is not None


@pytest.mark.parametrize("document", [b'{\n  "leader": "00000nam a2200000 i 4500",\n  "fields": []\n}\n',
                                      b'[{"leader": "00000nam a2200000 i 4500", "fields": []}]\n'])
def test_a_json_document_is_refused_as_a_file_not_line_by_line(tmp_path, document):
    (tmp_path / "doc.json").write_bytes(document)
    result = process_file(Input.from_path(tmp_path / "doc.json"), LocalDestination(tmp_path / "out"), workers=1)
    assert "a JSON document" in result.error and "one record per line" in result.error
    assert result.rejected == 0 and result.records_in == 0
