"""`process` and `replay` write to any destination: a local folder, `dropbox:/...`, one file per record."""

from __future__ import annotations

import json

import pytest

import pipeline.destinations as destinations
from pipeline.cli import main
from tests import marcgen
from tests.fake_dropbox import FakeDropbox


@pytest.fixture
def export(tmp_path):
    return marcgen.write_marcxml(tmp_path / "BIBS_1.xml", marcgen.records(25, seed=11), namespace=False)


def test_process_per_record_writes_one_whole_file_per_record(export, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["process", str(export), "--out", str(out), "--per-record", "records/{001}.xml"]) == 0
    files = sorted((out / "records").iterdir())
    assert len(files) == 25
    ids = {r.id for r in marcgen.records(25, seed=11)}
    assert {f.stem for f in files} == ids
    for f in files:  # each file is a whole MARCXML document with exactly one record
        text = f.read_text()
        assert text.startswith("<?xml") and text.count("<record") == 1 and "</collection>" in text
    report = json.loads((out / "report.json").read_text())
    assert report["files"][0]["records_out"] == 25


def test_process_per_record_bad_template_is_a_usage_error(export, tmp_path, capsys):
    assert main(["process", str(export), "--out", str(tmp_path / "o"), "--per-record", "records/{nope}.xml"]) == 2
    assert "--per-record" in capsys.readouterr().err


def test_process_writes_to_dropbox(export, tmp_path, clean_env, monkeypatch, capsys):
    fake = FakeDropbox().start()
    try:
        for k, v in fake.environ().items():
            clean_env.setenv(k, v)
        real = destinations.open_destination
        monkeypatch.setattr(destinations, "open_destination",
                            lambda url, **kw: real(url, session=fake.session(), **kw))
        assert main(["process", str(export), "--out", "dropbox:/Exports/test"]) == 0
        assert fake.paths() == ["/Exports/test/BIBS_1.xml", "/Exports/test/report.json"]
        local = tmp_path / "local"
        assert main(["process", str(export), "--out", str(local)]) == 0
        assert fake.file("/Exports/test/BIBS_1.xml").data == (local / "BIBS_1.xml").read_bytes()
        assert "report: dropbox:/Exports/test/report.json" in capsys.readouterr().out
    finally:
        fake.stop()


def test_process_to_dropbox_without_credentials_fails_in_one_line(export, clean_env, capsys):
    assert main(["process", str(export), "--out", "dropbox:/Exports"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DROPBOX_REFRESH_TOKEN" in err


def test_process_tsv_output(export, tmp_path):
    out = tmp_path / "tsv"
    assert main(["process", str(export), "--out", str(out), "--format", "tsv", "--columns", "id=001,title=245a"]) == 0
    lines = (out / "BIBS_1.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id\ttitle" and len(lines) == 26
    first = marcgen.records(25, seed=11)[0]
    assert lines[1].split("\t")[0] == first.id


def test_process_tsv_needs_columns(export, tmp_path, capsys):
    assert main(["process", str(export), "--out", str(tmp_path / "t"), "--format", "tsv"]) == 2
    assert "--format tsv needs --columns" in capsys.readouterr().err
