"""Output names from hostile values (issue 12, finding 3): limits in UTF-8 bytes per name (with room
for the local temporary suffix) and per path, Windows device names, control, bidi and zero-width
characters, and per-record names that are too long. Checked against the real file system."""

from __future__ import annotations

import io
import os
import unicodedata

import pytest
from lxml import etree

from pipeline.destinations.local import LocalDestination
from pipeline.destinations.paths import MAX_NAME, MAX_PATH, TEMP_NAME_EXTRA, destination_url, fit_name, sanitize_segment
from pipeline.destinations.per_record import PerRecordSink, RecordNamer
from pipeline.marc.engine import Input, process_file
from pipeline.marc.record import Field, Record, RecordError
from tests import marcgen

NS = {"m": "http://www.loc.gov/MARC21/slim"}


def rec(control: str) -> Record:
    return Record("00000nam a2200000 a 4500", [Field.control("001", control), Field("245", "1", "0", [("a", "t")])])


def test_the_local_temporary_name_of_the_longest_name_fits_255_bytes():
    assert MAX_NAME + TEMP_NAME_EXTRA == 255
    name = sanitize_segment("\u00e9" * 300)  # 2 bytes each: 600 bytes
    assert len(name.encode()) <= MAX_NAME
    assert len(f".{name}.12345678.part".encode()) <= 255


def test_a_shortened_name_is_stable_keeps_its_extension_and_differs_from_its_neighbours():
    a, b = "x" * 300 + "a.xml", "x" * 300 + "b.xml"
    assert fit_name(a) == fit_name(a)
    assert fit_name(a) != fit_name(b)
    assert fit_name(a).endswith(".xml") and len(fit_name(a).encode()) == MAX_NAME
    assert fit_name("short.xml") == "short.xml"
    cut = fit_name("\u4e2d" * 200)  # 3-byte characters are never split
    assert cut.encode().decode() == cut and len(cut.encode()) <= MAX_NAME


@pytest.mark.parametrize("value", ["CON", "con", "NUL.xml", "com1", "LPT9.txt", "AUX ", "conin$"])
def test_windows_device_names_are_made_safe(value):
    assert sanitize_segment(value).startswith("_")


@pytest.mark.parametrize(("value", "expected"), [
    ("a\u202eb", "ab"),            # right-to-left override: 'evil\u202egpj.exe' would look like 'evil...exe.jpg'
    ("a\u200bb\u200d\ufeffc", "abc"),  # zero-width space, joiner, BOM
    ("a\u2066b\u2069", "ab"),       # bidi isolates
    ("line\r\nbreak", "line__break"),  # CR LF: control characters become _
    ("a\x85b\x9bc", "a_b_c"),       # C1 controls (NEL, CSI)
    ("a\u2028b", "a b"),            # line separator
])
def test_control_bidi_and_zero_width_characters_never_reach_a_name(value, expected):
    out = sanitize_segment(value)
    assert out == expected
    assert not [c for c in out if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


def test_every_template_value_is_made_safe_in_destination_urls():
    url = destination_url("dropbox:/x/{job_name}/{institution}", job_name="NUL", institution="a\u202e\r\nb")
    assert url == "dropbox:/x/_NUL/a__b"


def test_a_long_non_ascii_destination_value_works_on_the_local_file_system(tmp_path):
    """Was: a job name of 128 two-byte characters passed the 255-character cut and failed locally."""
    job_name = "\u00e9" * 200
    url = destination_url(str(tmp_path / "{job_name}"), job_name=job_name)
    dest = LocalDestination(url)
    result = dest.write_bytes("manifest.json", b"{}")
    assert os.path.getsize(result.path) == 2
    assert len(os.path.basename(os.path.dirname(result.path)).encode()) <= MAX_NAME


def test_a_long_output_name_is_shortened_on_the_local_file_system(tmp_path):
    dest = LocalDestination(tmp_path)
    result = dest.write_bytes("d/" + "n" * 300 + ".xml", b"<x/>")
    name = os.path.basename(result.path)
    assert name.endswith(".xml") and len(name.encode()) <= MAX_NAME
    assert open(result.path, "rb").read() == b"<x/>"
    with pytest.raises(ValueError, match="leaves the destination"):
        dest.write_bytes("a/../../b", b"")


def test_per_record_names_over_the_path_limit_reject_that_record_only():
    namer = RecordNamer("{001}/" * 20 + "{n}.xml")
    with pytest.raises(RecordError, match=f"the limit is {MAX_PATH}"):
        namer.name(rec("y" * 300), 1)
    assert namer.name(rec("ok"), 2) == "ok/" * 20 + "2.xml"


def test_one_record_with_a_300_character_001_no_longer_fails_the_file(tmp_path):
    """The finding: 39 records, record 20 with a 300-character 001, `records/{001}.xml`: only 20 were written."""
    recs = marcgen.records(39, seed=12)
    long_id = "L" * 300
    recs[19].fields = [Field.control("001", long_id) if f.tag == "001" else f for f in recs[19].fields]
    data = marcgen.marcxml_bytes(recs)
    result = process_file(Input("export.xml", lambda: io.BytesIO(data), len(data)), LocalDestination(tmp_path),
                          fmt="marcxml", sink_factory=PerRecordSink.factory("records/{001}.xml"), workers=1)
    assert result.error is None
    assert (result.records_out, result.rejected) == (39, 0)
    files = os.listdir(tmp_path / "records")
    assert len(files) == 39
    assert max(len(f.encode()) for f in files) <= MAX_NAME
    (shortened,) = [f for f in files if f.startswith("LLLL")]
    assert shortened.endswith(".xml") and "~" in shortened
    ids = etree.parse(str(tmp_path / "records" / shortened)).xpath("//m:controlfield[@tag='001']/text()",
                                                                     namespaces=NS)
    assert ids == [long_id]  # the record itself is whole; only its file name is shortened


def test_a_per_record_name_that_cannot_be_made_valid_rejects_that_record_with_the_reason(tmp_path):
    recs = marcgen.records(5, seed=4)
    recs[2].fields = [Field.control("001", "z" * 200) if f.tag == "001" else f for f in recs[2].fields]
    data = marcgen.marcxml_bytes(recs)
    template = "{001}/" * 21 + "{n}.xml"  # 21 names of 200+ bytes exceed MAX_PATH for record 3 only
    result = process_file(Input("in.xml", lambda: io.BytesIO(data), len(data)), LocalDestination(tmp_path),
                          fmt="marcxml", sink_factory=PerRecordSink.factory(template), workers=1)
    assert result.error is None
    assert (result.records_out, result.rejected) == (4, 1)
    (entry,) = (tmp_path / "in.rejects.jsonl").read_text().splitlines()
    assert '"stage": "write"' in entry and f"the limit is {MAX_PATH}" in entry
