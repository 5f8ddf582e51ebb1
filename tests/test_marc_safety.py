"""Untrusted input: XXE, billion laughs, external DTDs, decompression bombs, malformed and unknown files."""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
from pathlib import Path

import marcgen
from lxml import etree

from pipeline.destinations.local import LocalDestination
from pipeline.marc import marcxml
from pipeline.marc.engine import Input, process_file

LEADER = "<leader>00000nam a2200000 i 4500</leader>"


def run(path: Path, out: Path, **kw):
    return process_file(Input.from_path(path), LocalDestination(out), fmt="marcxml", workers=1, **kw)


def rejects(out: Path, stem: str) -> list[dict]:
    path = out / f"{stem}.rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_xxe_entity_is_not_expanded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    doc = f"""<?xml version="1.0"?>
<!DOCTYPE collection [<!ENTITY xxe SYSTEM "file://{secret}">]>
<collection>
<record>{LEADER}<controlfield tag="001">1</controlfield></record>
<record>{LEADER}<controlfield tag="001">2</controlfield><datafield tag="245" ind1="0" ind2="0">
<subfield code="a">&xxe;</subfield></datafield></record>
<record>{LEADER}<controlfield tag="001">3</controlfield></record>
</collection>"""
    src = tmp_path / "xxe.xml"
    src.write_text(doc)
    result = run(src, tmp_path / "out")
    assert (result.error, result.records_out, result.rejected) == (None, 2, 1)
    everything = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir())
    assert b"TOP-SECRET-VALUE" not in everything
    [entry] = rejects(tmp_path / "out", "xxe")
    assert entry["id"] == "2" and "xxe" in entry["error"]


def test_billion_laughs_is_not_expanded(tmp_path):
    ents = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    doc = (f'<?xml version="1.0"?><!DOCTYPE collection [<!ENTITY l0 "lol">{ents}]><collection>'
           f'<record>{LEADER}<datafield tag="245" ind1="0" ind2="0"><subfield code="a">&l9;</subfield>'
           f'</datafield></record><record>{LEADER}<controlfield tag="001">ok</controlfield></record></collection>')
    src = tmp_path / "lol.xml"
    src.write_text(doc)
    result = run(src, tmp_path / "out")
    assert (result.error, result.records_out, result.rejected) == (None, 1, 1)
    assert (tmp_path / "out" / "lol.xml").stat().st_size < 1000


def test_external_dtd_is_never_fetched(tmp_path):
    hits = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)

    def accept():
        try:
            conn, _ = server.accept()
            hits.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    doc = (f'<?xml version="1.0"?><!DOCTYPE collection SYSTEM "http://127.0.0.1:{port}/evil.dtd">'
           f'<collection><record>{LEADER}<controlfield tag="001">1</controlfield></record></collection>')
    src = tmp_path / "dtd.xml"
    src.write_text(doc)
    result = run(src, tmp_path / "out")
    server.close()
    thread.join(5)
    assert (result.error, result.records_out) == (None, 1)
    assert hits == []


def test_gzip_bomb_is_cut_off_by_the_ratio_cap(tmp_path):
    src = tmp_path / "bomb.xml.gz"
    with gzip.open(src, "wb", compresslevel=9) as gz:
        gz.write(b"<collection>")
        block = b" " * (1 << 20)
        for _ in range(64):  # 64 MiB of blanks compress to about 64 KiB
            gz.write(block)
        gz.write(b"</collection>")
    assert src.stat().st_size < 1 << 20
    result = run(src, tmp_path / "out")
    assert result.error is not None and "decompression bomb" in result.error and "bomb.xml.gz" in result.error
    assert not (tmp_path / "out" / "bomb.xml").exists()


def test_gzip_of_zeros_is_a_clear_error(tmp_path):
    src = tmp_path / "zeros.gz"
    src.write_bytes(gzip.compress(b"\x00" * (8 << 20)))
    result = run(src, tmp_path / "out")
    assert "NUL bytes" in result.error


def test_absolute_expansion_cap(tmp_path):
    data = marcgen.marcxml_bytes(marcgen.records(200, seed=1))
    src = tmp_path / "normal.xml.gz"
    src.write_bytes(gzip.compress(data))
    result = run(src, tmp_path / "out", max_expanded_bytes=len(data) // 2)
    assert "expands to more than" in result.error and "MAX_EXPANDED_MIB" in result.error
    ok = run(src, tmp_path / "out2", max_expanded_bytes=len(data) + 1)
    assert ok.error is None and ok.records_out == 200


def test_malformed_record_is_rejected_in_original_form(tmp_path):
    recs = marcgen.records(6, seed=2)
    parts = marcgen.marcxml_bytes(recs, prefix="marc").split(b"\n")
    # record 3 (line index 2 + 3): an unclosed subfield
    parts[5] = parts[5].replace(b"</marc:subfield>", b"", 1)
    src = tmp_path / "bad.xml"
    src.write_bytes(b"\n".join(parts))
    result = run(src, tmp_path / "out")
    assert (result.error, result.records_out, result.rejected) == (None, 5, 1)
    [entry] = rejects(tmp_path / "out", "bad")
    assert entry["index"] == 3 and entry["id"] == recs[3].id and "malformed XML" in entry["error"]
    assert entry["offset"] == len(b"\n".join(parts[:5])) + 1
    raw = (tmp_path / "out" / "bad.rejects.xml").read_bytes()
    assert raw.count(b"<marc:record>") == 1 and b'xmlns:marc="http://www.loc.gov/MARC21/slim"' in raw
    out = etree.parse(str(tmp_path / "out" / "bad.xml")).getroot()
    assert [marcxml.element_to_record(el).id for el in out] == [r.id for i, r in enumerate(recs) if i != 3]


def test_truncated_xml_fails_the_file_after_reporting_what_was_read(tmp_path):
    data = marcgen.marcxml_bytes(marcgen.records(10, seed=3), namespace=False)
    src = tmp_path / "cut.xml"
    src.write_bytes(data[: len(data) * 2 // 3])
    result = run(src, tmp_path / "out")
    assert result.error is not None and "truncated" in result.error and "cut.xml" in result.error
    assert result.records_in >= 5
    assert not (tmp_path / "out" / "cut.xml").exists()  # no partial file under the final name
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # temp files cleaned


def test_garbage_between_records_fails_the_file(tmp_path):
    data = marcgen.marcxml_bytes(marcgen.records(3, seed=4)).replace(b"</record>\n", b"</record>\nhello\n", 1)
    src = tmp_path / "junk.xml"
    src.write_bytes(data)
    result = run(src, tmp_path / "out")
    assert "malformed XML" in result.error and "hello" in result.error


def test_unknown_content_and_wrong_root(tmp_path):
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4 not marc at all")
    result = run(tmp_path / "a.pdf", tmp_path / "out")
    assert "unknown content" in result.error
    (tmp_path / "b.xml").write_text("<html><body/></html>")
    result = run(tmp_path / "b.xml", tmp_path / "out")
    assert "not a MARCXML" in result.error


def test_single_record_document_and_empty_inputs(tmp_path):
    rec = marcgen.records(1, seed=5)[0]
    body = marcgen.marcxml_bytes([rec]).split(b"\n")[2]
    (tmp_path / "one.xml").write_bytes(b'<?xml version="1.0"?>\n' + body.replace(
        b"<record>", b'<record xmlns="http://www.loc.gov/MARC21/slim">') + b"\n")
    result = run(tmp_path / "one.xml", tmp_path / "out")
    assert (result.error, result.records_out) == (None, 1)
    (tmp_path / "empty.xml").write_bytes(b"")
    result = run(tmp_path / "empty.xml", tmp_path / "out")
    assert (result.error, result.records_out) == (None, 0)
    assert b"<collection" in (tmp_path / "out" / "empty.xml").read_bytes()


def test_framer_handles_records_across_block_boundaries(monkeypatch):
    from pipeline.marc import framing

    monkeypatch.setattr(marcxml, "BLOCK", 97)
    monkeypatch.setattr(framing, "BLOCK", 97)
    recs = marcgen.records(30, seed=6)
    data = marcgen.marcxml_bytes(recs, prefix="m").replace(b"</m:record>\n", b"</m:record>\n<!-- c -->\n", 3)
    framer = marcxml.XmlFramer(io.BytesIO(data))
    raws = [f.raw for f in framer.frames()]
    assert marcxml.parse_marcxml_batch(framer.context(), raws) == recs
    mrc = marcgen.marc21_bytes(recs)
    assert [f.raw for f in framing.frames_terminated(io.BytesIO(mrc), b"\x1d", what="record")] == \
        [marcgen.marc21_record(r) for r in recs]
