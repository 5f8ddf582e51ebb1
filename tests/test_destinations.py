"""Destinations without Dropbox: path templates, the stream hasher, the local folder (atomic and
resumable), and one-file-per-record output to a local folder."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
from dropbox.dropbox_client import _content_hash as sdk_content_hash

from pipeline.destinations import open_destination
from pipeline.destinations.base import DROPBOX_BLOCK, DestinationError, StreamHasher
from pipeline.destinations.local import LocalDestination
from pipeline.destinations.paths import MAX_NAME, destination_url, sanitize_segment
from pipeline.destinations.per_record import PerRecordSink, RecordNamer
from pipeline.marc.record import Field, Record, RecordError
from tests.fake_dropbox import content_hash as fake_content_hash


def data_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def rec(control: str | None, title: str = "t") -> Record:
    fields = [Field.control("001", control)] if control is not None else []
    return Record("00000nam a2200000 a 4500", [*fields, Field("245", "1", "0", [("a", title)])])


# -- path templates ------------------------------------------------------------------------------

def test_destination_template_fills_and_sanitises_event_values():
    url = destination_url("dropbox:/Alma exports/{institution}/{job_name}/{date}/{instance_id}",
                          job_name='Daily: "new"/changed?', job_id="1", instance_id="9876",
                          institution="01UNI_INST", date="2026-11-29")
    assert url == "dropbox:/Alma exports/01UNI_INST/Daily_ _new__changed_/2026-11-29/9876"


def test_destination_template_drops_empty_segments_and_reserved_names():
    assert destination_url("dropbox:/x/{institution}/{job_name}", job_name="desktop.ini") == \
        "dropbox:/x/_desktop.ini"
    assert destination_url("dropbox:/{job_name}", job_name=" ... ") == "dropbox:"
    assert destination_url("out/{institution}/{job_id}", job_id="7") == "out/7"
    assert destination_url("file:///tmp/x/{institution}/{job_id}", job_id="7") == "file:///tmp/x/7"


@pytest.mark.parametrize(("template", "message"), [
    ("dropbox:/{jobname}", "unknown placeholder {jobname}"),
    ("dropbox:/{job_name:>10}", "takes no format spec"),
    ("dropbox:/{job_name", "malformed"),
])
def test_bad_destination_templates_fail_clearly(template, message):
    with pytest.raises(ValueError, match=message):
        destination_url(template, job_name="x")


def test_destination_date_must_be_iso():
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        destination_url("dropbox:/{date}", date="29/11/2026")


def test_sanitize_segment_limits():
    assert sanitize_segment("a\x00b\tc") == "a_b_c"
    assert sanitize_segment("name. ") == "name"
    assert len(sanitize_segment("x" * 400).encode()) == MAX_NAME
    assert sanitize_segment("Thumbs.db") == "_Thumbs.db"


# -- stream hasher -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, DROPBOX_BLOCK - 1, DROPBOX_BLOCK, 2 * DROPBOX_BLOCK + 5])
def test_hasher_matches_sdk_and_an_independent_implementation(size):
    data = data_of(size)
    h = StreamHasher()
    for i in range(0, size, 777_777):
        h.update(data[i:i + 777_777])
    assert h.size == size
    assert h.sha256 == hashlib.sha256(data).hexdigest()
    assert h.content_hash == fake_content_hash(data) == sdk_content_hash(data)


def test_hasher_state_resumes_the_content_hash_at_block_boundaries():
    data = data_of(2 * DROPBOX_BLOCK + 1000)
    h = StreamHasher()
    h.update(data[: DROPBOX_BLOCK + 10])
    state = json.loads(json.dumps(h.state()))
    assert state["size"] == DROPBOX_BLOCK
    resumed = StreamHasher.from_state(state)
    resumed.update(data[DROPBOX_BLOCK:])
    assert resumed.content_hash == fake_content_hash(data)
    assert resumed.sha256 == ""  # documented: SHA-256 cannot be carried across a resume
    assert resumed.range_content_hash(DROPBOX_BLOCK, resumed.size) == fake_content_hash(data[DROPBOX_BLOCK:])
    with pytest.raises(ValueError, match="inconsistent"):
        StreamHasher.from_state({"size": DROPBOX_BLOCK, "blocks": ""})


# -- local folder --------------------------------------------------------------------------------

def test_local_output_appears_only_on_commit(tmp_path):
    dest = open_destination(str(tmp_path / "out"))
    out = dest.open("a/b/c.xml")
    out.write(b"<x/>")
    assert not (tmp_path / "out/a/b/c.xml").exists()
    result = out.commit()
    assert (tmp_path / "out/a/b/c.xml").read_bytes() == b"<x/>"
    assert result.sha256 == hashlib.sha256(b"<x/>").hexdigest() and result.size == 4
    aborted = dest.open("a/b/gone.xml")
    aborted.write(b"partial")
    aborted.abort()
    assert sorted(p.name for p in (tmp_path / "out/a/b").iterdir()) == ["c.xml"]


def test_local_paths_cannot_escape_the_folder(tmp_path):
    dest = LocalDestination(tmp_path)
    for bad in ("../x", "", "a/../../x"):
        with pytest.raises(ValueError, match="leaves the destination folder"):
            dest.open(bad)
    with pytest.raises(ValueError, match="names a host"):
        LocalDestination.from_url("file://server/share")


def test_local_resume_truncates_what_a_crashed_invocation_wrote_after_the_checkpoint(tmp_path):
    data = data_of(3 * 1024 * 1024 + 17)
    dest = LocalDestination(tmp_path)
    out = dest.open("exports/big.mrc")
    out.write(data[:1_000_000])
    state = json.loads(json.dumps(out.checkpoint()))
    out.write(b"garbage written after the checkpoint, then the process died")
    del out  # no commit, no abort: a crash

    resumed = LocalDestination(tmp_path).resume(state)
    assert resumed.position == 1_000_000
    resumed.write(data[1_000_000:])
    result = resumed.commit()
    assert (tmp_path / "exports/big.mrc").read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()  # exact: the prefix was re-read
    assert result.content_hash == fake_content_hash(data)
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["big.mrc"]


def test_local_resume_without_its_part_file_fails_clearly(tmp_path):
    dest = LocalDestination(tmp_path)
    out = dest.open("x.xml")
    out.write(b"abc")
    state = out.checkpoint()
    out.abort()
    with pytest.raises(DestinationError, match="temporary file .* is gone"):
        dest.resume(state)
    with pytest.raises(DestinationError, match="bad temporary file"):
        dest.resume({**state, "part": "../../etc/passwd"})
    with pytest.raises(DestinationError, match="cannot resume a 'dropbox' output"):
        dest.resume({**state, "kind": "dropbox"})


# -- one file per record, local folder -------------------------------------------------------------

def test_record_namer_placeholders_and_case_insensitive_duplicates():
    namer = RecordNamer("records/{001}/{245a}-{n}.xml")
    assert namer.name(rec("99 1/2", "A: title"), 1) == "records/99 1_2/A_ title-1.xml"
    plain = RecordNamer("r/{001}.xml")
    assert plain.name(rec("ABC"), 1) == "r/ABC.xml"
    assert plain.name(rec("abc"), 2) == "r/abc~2.xml"
    assert plain.name(rec("ABC"), 3) == "r/ABC~3.xml"
    assert plain.duplicates == [("r/abc.xml", "r/abc~2.xml"), ("r/ABC.xml", "r/ABC~3.xml")]
    with pytest.raises(RecordError, match="has no 001"):
        plain.name(rec(None), 4)


@pytest.mark.parametrize(("template", "message"), [
    ("records/fixed.xml", "no placeholder"),
    ("records/{title}.xml", "not a placeholder"),
    ("records/{001", "malformed"),
])
def test_bad_per_record_templates_fail_clearly(template, message):
    with pytest.raises(ValueError, match=message):
        RecordNamer(template)


def test_per_record_sink_writes_plain_files_to_a_local_folder(tmp_path):
    sink = PerRecordSink(LocalDestination(tmp_path), "records/{001}.xml")
    sink.begin()
    for i in range(30):
        sink.record(rec(str(i % 25)), f"<record>{i}</record>".encode())
    with pytest.raises(RecordError):
        sink.record(rec(None), b"no id")
    results = sink.end()
    files = sorted(os.listdir(tmp_path / "records"))
    assert len(results) == 30 == len(files)
    assert "0~2.xml" in files and (tmp_path / "records/0~2.xml").read_bytes() == b"<record>25</record>"
    assert len(sink.duplicates) == 5
    assert not [f for f in files if f.endswith(".part")]


def test_engine_writes_one_complete_document_per_record_to_a_local_folder(tmp_path):
    import io

    from lxml import etree

    from pipeline.marc.engine import Input, process_file
    from tests import marcgen

    recs = marcgen.records(12, seed=3)
    data = marcgen.marcxml_bytes(recs)
    result = process_file(Input("export_new.xml", lambda: io.BytesIO(data), len(data)), LocalDestination(tmp_path),
                          fmt="marcxml", sink_factory=PerRecordSink.factory("{stem}/{001}.xml"), workers=1)
    assert result.error is None and result.records_out == 12 and len(result.outputs) == 12
    for r in recs:
        doc = etree.parse(str(tmp_path / "export_new" / f"{r.control('001')}.xml"))
        ids = doc.xpath("//m:controlfield[@tag='001']/text()", namespaces={"m": "http://www.loc.gov/MARC21/slim"})
        assert ids == [r.control("001")]
