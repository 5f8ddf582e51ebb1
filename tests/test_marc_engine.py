"""The engine: containers, parallel workers, report, sinks, rules, and stop/continue for time budgets."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile

import marcgen
import pytest
from lxml import etree

from pipeline.destinations.local import LocalDestination
from pipeline.marc import engine, marcxml
from pipeline.marc.engine import Input, process, process_file
from pipeline.marc.sinks import FileSink


def ids_in_xml(path) -> list[str]:
    return [marcxml.element_to_record(el).id for el in etree.parse(str(path)).getroot()]


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_containers_each_member_is_an_input(tmp_path):
    a, b = marcgen.records(7, seed=1), marcgen.records(5, seed=2, start=100)
    (tmp_path / "export_new_1.xml.tar.gz").write_bytes(tar_gz({
        "export_new_1.xml": marcgen.marcxml_bytes(a, namespace=False),
        "more/part2.mrc": marcgen.marc21_bytes(b)}))
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("z.json", marcgen.json_bytes(b))
    (tmp_path / "z.zip").write_bytes(zbuf.getvalue())
    (tmp_path / "plain.mrc.gz").write_bytes(gzip.compress(marcgen.marc21_bytes(a)))
    out = tmp_path / "out"
    report = process([Input.from_path(tmp_path / n) for n in ("export_new_1.xml.tar.gz", "z.zip", "plain.mrc.gz")],
                     LocalDestination(out), workers=1)
    assert report.ok
    tgz, zipped, plain = report.files
    assert tgz.members == ["export_new_1.xml.tar/export_new_1.xml", "export_new_1.xml.tar/more/part2.mrc"]
    assert (tgz.records_out, zipped.records_out, plain.records_out) == (12, 5, 7)
    assert ids_in_xml(out / "export_new_1.xml") == [r.id for r in a]
    assert ids_in_xml(out / "part2.xml") == [r.id for r in b]
    assert ids_in_xml(out / "z.xml") == [r.id for r in b]
    assert ids_in_xml(out / "plain.xml") == [r.id for r in a]
    assert tgz.bytes_in == (tmp_path / "export_new_1.xml.tar.gz").stat().st_size


def test_report_json_names_every_output_with_its_sha256(tmp_path):
    recs = marcgen.records(30, seed=3)
    blobs = [marcgen.marc21_record(r) for r in recs]
    blobs[4] = blobs[4][:30] + b"\xff" + blobs[4][31:]
    (tmp_path / "in.mrc").write_bytes(b"".join(blobs))
    (tmp_path / "nope.bin").write_bytes(b"\x89PNG not marc")
    out = tmp_path / "out"
    report = process([Input.from_path(tmp_path / "in.mrc"), Input.from_path(tmp_path / "nope.bin")],
                     LocalDestination(out), fmt="marc21", workers=1)
    data = json.loads((out / "report.json").read_text())
    assert data["ok"] is False and report.ok is False
    assert data["totals"] == {"files": 2, "failed": 1, "records_in": 30, "records_out": 29, "rejected": 1,
                              "dropped": 0, "bytes_in": sum(map(len, blobs)) + 13,
                              "rejected_by_reason": {"marc21-directory-not-ascii": 1}}
    good, bad = data["files"]
    assert (good["records_in"], good["records_out"], good["rejected"], good["error"]) == (30, 29, 1, None)
    assert good["rejected_by_reason"] == {"marc21-directory-not-ascii": 1} and bad["rejected_by_reason"] == {}
    assert good["input_format"] == "marc21" and good["seconds"] >= 0
    kinds = {o["kind"]: o for o in good["outputs"]}
    assert set(kinds) == {"records", "rejects", "rejects-log"}
    for o in good["outputs"]:
        assert o["sha256"] == hashlib.sha256(open(o["path"], "rb").read()).hexdigest()
    assert kinds["records"]["path"].endswith("in.mrc") and kinds["rejects"]["path"].endswith("in.rejects.mrc")
    assert "unknown content" in bad["error"] and bad["outputs"] == []


def test_parallel_workers_give_the_same_bytes_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 16)  # many small batches, several in flight
    recs = marcgen.records(400, seed=4)
    blobs = [marcgen.marc21_record(r) for r in recs]
    blobs[123] = blobs[123][:30] + b"\xff" + blobs[123][31:]
    src = tmp_path / "in.mrc"
    src.write_bytes(b"".join(blobs))
    one = process_file(Input.from_path(src), LocalDestination(tmp_path / "one"), workers=1)
    two = process_file(Input.from_path(src), LocalDestination(tmp_path / "two"), workers=2)
    assert (one.records_out, one.rejected) == (two.records_out, two.rejected) == (399, 1)
    for name in ("in.xml", "in.rejects.mrc", "in.rejects.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


class ListSink:
    """A sink that keeps records (what a per-record destination would do)."""

    wants_record = True
    got: list = []

    def __init__(self, stem, write_header):
        self.stem, self.write_header = stem, write_header

    @classmethod
    def factory(cls, destination, stem, encoder, write_header):
        return cls(stem, write_header)

    def begin(self):
        pass

    def record(self, record, data):
        ListSink.got.append((record.id, data))

    def end(self, complete=True):
        return []

    def abort(self):
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_custom_sink_receives_records(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 10)
    ListSink.got = []
    recs = marcgen.records(45, seed=5)
    src = marcgen.write_marc21(tmp_path / "in.mrc", recs)
    result = process_file(Input.from_path(src), LocalDestination(tmp_path / "out"), fmt="json",
                          workers=workers, sink_factory=ListSink.factory)
    assert result.records_out == 45
    assert [i for i, _ in ListSink.got] == [r.id for r in recs]
    assert json.loads(ListSink.got[0][1])["fields"][0] == {"001": recs[0].id}


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_and_continue_joins_into_the_whole_output(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 25)
    monkeypatch.setattr(marcxml, "CHUNK_BYTES", 64 << 10)  # workers frame chunks of about ten records
    recs = marcgen.records(200, seed=6)
    src = marcgen.write_marcxml(tmp_path / "in.xml", recs)
    whole = process_file(Input.from_path(src), LocalDestination(tmp_path / "whole"), workers=1)
    assert whole.complete and whole.records_done == 200
    calls = []

    def stop_after_two_batches() -> bool:  # asked after each batch, from the first one on
        calls.append(1)
        return len(calls) >= 2

    part1 = process_file(Input.from_path(src), LocalDestination(tmp_path / "p1"), workers=workers,
                         should_stop=stop_after_two_batches)
    # one process stops after 2 batches; with workers the chunks already in flight are finished too
    assert not part1.complete and part1.records_done == part1.records_in
    assert part1.records_done == 50 if workers == 1 else 0 < part1.records_done < 200
    part2 = process_file(Input.from_path(src), LocalDestination(tmp_path / "p2"), workers=workers,
                         start_record=part1.records_done)
    assert part2.complete and part2.records_in == 200 - part1.records_done and part2.records_done == 200
    joined = (tmp_path / "p1" / "in.xml").read_bytes() + (tmp_path / "p2" / "in.xml").read_bytes()
    assert joined == (tmp_path / "whole" / "in.xml").read_bytes()


def test_continuation_across_container_members(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 10)
    a, b = marcgen.records(20, seed=7), marcgen.records(20, seed=8, start=50)
    (tmp_path / "two.tar").write_bytes(gzip.decompress(tar_gz({"a.xml": marcgen.marcxml_bytes(a),
                                                                "b.xml": marcgen.marcxml_bytes(b)})))
    src = Input.from_path(tmp_path / "two.tar")
    calls = []
    part1 = process_file(src, LocalDestination(tmp_path / "p1"), workers=1,
                         should_stop=lambda: calls.append(1) or len(calls) >= 3)  # a.xml done, b.xml half
    assert part1.records_done == 30 and not part1.complete
    part2 = process_file(src, LocalDestination(tmp_path / "p2"), workers=1, start_record=30)
    assert part2.complete and part2.records_in == 10
    assert not (tmp_path / "p2" / "a.xml").exists()  # a.xml was delivered whole by part 1
    assert ids_in_xml(tmp_path / "p1" / "a.xml") == [r.id for r in a]
    b_joined = (tmp_path / "p1" / "b.xml").read_bytes() + (tmp_path / "p2" / "b.xml").read_bytes()
    assert [marcxml.element_to_record(el).id for el in etree.fromstring(b_joined)] == [r.id for r in b]


RULES = """version: 1
rules:
  - drop: true
    if: {equals: {path: LDR/05, value: d}}
  - replace: {path: LDR, pattern: '^', with: "x"}
    if: {equals: {path: "001", value: "BROKEN"}}
  - remove: 9XX
"""


def test_rules_drop_reject_and_edit(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    recs = marcgen.records(12, seed=9)
    recs[2].leader = recs[2].leader[:5] + "d" + recs[2].leader[6:]
    recs[7].fields[0].value = "BROKEN"
    src = marcgen.write_marcxml(tmp_path / "in.xml", recs)
    result = process_file(Input.from_path(src), LocalDestination(tmp_path / "out"), rules_path=str(rules), workers=2)
    assert (result.records_in, result.records_out, result.dropped, result.rejected) == (12, 10, 1, 1)
    out = [marcxml.element_to_record(el) for el in etree.parse(str(tmp_path / "out" / "in.xml")).getroot()]
    assert not any(f.tag.startswith("9") for r in out for f in r.fields)
    entry = json.loads((tmp_path / "out" / "in.rejects.jsonl").read_text())
    assert entry["stage"] == "rules" and entry["id"] == "BROKEN" and entry["index"] == 7


@pytest.mark.parametrize("workers", [1, 2])
def test_rules_are_compiled_once_per_run(tmp_path, monkeypatch, workers):
    """A rules file is read and compiled once in the main process, however many files and workers a run
    has (workers get the compiled set: inherited when forked, as its text otherwise)."""
    import pipeline.rules

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    loads = []
    real = pipeline.rules.load_rules
    monkeypatch.setattr(pipeline.rules, "load_rules", lambda path: loads.append(path) or real(path))
    inputs = [Input.from_path(marcgen.write_marcxml(tmp_path / f"in{i}.xml", marcgen.records(12, seed=9 + i)))
              for i in range(3)]
    report = process(inputs, LocalDestination(tmp_path / "out"), rules_path=str(rules), workers=workers)
    assert report.ok and loads == [str(rules)] and report.rules == str(rules)
    assert sum(f.records_out for f in report.files) == 36
    assert all(b'tag="9' not in (tmp_path / "out" / f"in{i}.xml").read_bytes() for i in range(3))  # they ran


def test_a_tiny_budget_still_makes_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 10)
    src = marcgen.write_marc21(tmp_path / "in.mrc", marcgen.records(25, seed=10))
    done, parts = 0, 0
    while True:
        result = process_file(Input.from_path(src), LocalDestination(tmp_path / f"p{parts}"), workers=1,
                              should_stop=lambda: True, start_record=done)
        parts += 1
        assert result.records_done > done and result.error is None
        done = result.records_done
        if result.complete:
            break
    assert (done, parts) == (25, 3)


def test_file_sink_writes_through_a_temporary_name(tmp_path):
    dest = LocalDestination(tmp_path)
    sink = FileSink(dest, "x.xml", b"<h>", b"</h>")
    sink.begin()
    sink.record(None, b"<r/>")
    assert not (tmp_path / "x.xml").exists()
    [result] = sink.end()
    assert (tmp_path / "x.xml").read_bytes() == b"<h><r/></h>" and result.size == 11
    sink = FileSink(dest, "y.xml", b"<h>", b"</h>")
    sink.begin()
    sink.record(None, b"<r/>")
    sink.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.xml"]


def test_a_failing_destination_raises_and_leaves_nothing(tmp_path):
    from pipeline.destinations.base import DestinationError
    from pipeline.destinations.local import LocalOutput

    class Failing(LocalOutput):
        def write(self, data):
            raise DestinationError("quota exceeded")

    class FailingDestination(LocalDestination):
        def open(self, relpath):
            return LocalOutput(self.root / relpath) if relpath == "report.json" else Failing(self.root / relpath)

    src = marcgen.write_marc21(tmp_path / "in.mrc", marcgen.records(5, seed=11))
    with pytest.raises(DestinationError, match="quota"):
        process_file(Input.from_path(src), FailingDestination(tmp_path / "out"), workers=1)
    assert list((tmp_path / "out").iterdir()) == []  # temporary files removed
    report = process([Input.from_path(src)], FailingDestination(tmp_path / "out2"), workers=1)
    assert not report.ok and "quota exceeded" in report.files[0].error
