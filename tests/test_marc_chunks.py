"""Framing in the workers: cutting a stream into chunks in the main process and framing each chunk in
a worker gives exactly the frames (bytes, offsets, errors) and the file-level error that framing
record by record gives, and the engine's outputs are the same either way."""

from __future__ import annotations

import io
import random
from pathlib import Path

import marcgen
import pytest

from pipeline.destinations.local import LocalDestination
from pipeline.marc import framing, marcxml
from pipeline.marc.engine import Input, process_file
from pipeline.marc.framing import Chunk, InputError
from pipeline.marc.readers import reader


def frame_all(fmt: str, data: bytes, chunked: bool) -> tuple[list, str | None, int]:
    """Every frame of `data` (through chunks when `chunked`, each framed as a worker would) and the
    file-level error, if any; plus how many chunks there were."""
    read = reader(fmt)
    framing_ = read.framing(io.BytesIO(data))
    frames: list = []
    chunks = 0
    try:
        for item in framing_.frames(chunked):
            if type(item) is Chunk:
                chunks += 1
                frames.extend(read.frame_chunk(framing_.chunk_context(), item))  # type: ignore[misc]
            else:
                frames.append(item)
    except InputError as exc:
        return frames, str(exc), chunks
    return frames, None, chunks


def xml_documents() -> list[bytes]:
    recs = marcgen.records(40, seed=31)
    plain = marcgen.marcxml_bytes(recs, namespace=False)
    prefixed = marcgen.marcxml_bytes(recs, prefix="marc")
    body = plain.split(b"\n", 2)[2].rsplit(b"</collection>", 1)[0]
    head = b'<?xml version="1.0" encoding="UTF-8"?>\n<collection>\n'
    one = body.split(b"\n")[0]
    docs = [plain, prefixed, marcgen.marcxml_bytes(recs)]
    docs += [
        head + body.replace(b"</record>\n", b"</record>\n<!-- c -->\n", 3) + b"</collection>\n",
        head + body.replace(b"</record>\n", b"</record>\n<?pi x?>\n", 2) + b"</collection>\n",
        head + body.replace(b"<subfield code=\"a\">", b"<subfield code=\"a\"><![CDATA[</record>]]>", 2)
        + b"</collection>\n",
        head + body.replace(b"</record>\n", b"</record>\njunk\n", 1) + b"</collection>\n",  # file error
        head + body + b"</collection>\n" + one + b"\n",  # content after the root
        head + body.replace(b"</record>\n", b"</record>\n<other>x</other>\n", 2) + b"</collection>\n",
        head + body.replace(b"</record>\n", b"</record>\n<record/>\n", 2) + b"</collection>\n",
        head + body,  # truncated: no end of the collection
        head + body[: len(body) // 2],  # truncated inside a record
        head + body.replace(b"<record>", b'<record a="</record>">', 1) + b"</collection>\n",
        head + body.replace(b"\n", b"\r\n  ") + b"</collection>\n",
        head + one.replace(b"<leader>", b"<leader>" + b"x" * 9000, 1) + b"\n" + body + b"</collection>\n",
    ]
    return docs


@pytest.mark.parametrize("chunk_bytes", [1 << 10, 8 << 10, 64 << 10])
def test_xml_chunks_frame_as_records_do(monkeypatch, chunk_bytes):
    monkeypatch.setattr(marcxml, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(marcxml, "BLOCK", 16 << 10)  # buffers dropped and refilled often
    chunked_any = 0
    for doc in xml_documents():
        whole = frame_all("marcxml", doc, chunked=False)
        parts = frame_all("marcxml", doc, chunked=True)
        assert parts[:2] == whole[:2], doc[:200]
        chunked_any += parts[2]
    assert chunk_bytes < 8 << 10 or chunked_any > 20  # the plain documents really went through chunks


def marc21_documents(huge: bool = False) -> list[bytes]:
    recs = marcgen.records(60, seed=32)
    blobs = [marcgen.marc21_record(r) for r in recs]
    plain = b"".join(blobs)
    rng = random.Random(3)
    docs = [plain, b"\n".join(blobs) + b"\n", plain + blobs[0][:100], b"  \x00".join(blobs) + b"\r\n"]
    for _ in range(20):
        cut = bytearray(plain)
        for _ in range(5):
            cut[rng.randrange(len(cut))] = rng.choice(b"\x1d\x1e \n")
        docs.append(bytes(cut))
    if huge:  # records over the size limit (8 MiB): skipped unread, at the same offsets
        big = b"x" * (framing.MAX_RECORD_BYTES + 2_500_000)
        docs.append(b"".join(blobs[:10]) + big + b"\x1d" + b"".join(blobs[10:]))
        docs.append(b"".join(blobs[:10]) + big)  # unterminated
    return docs


@pytest.mark.parametrize("block", [4 << 10, 1 << 20])
def test_marc21_chunks_frame_as_records_do(monkeypatch, block):
    monkeypatch.setattr(framing, "BLOCK", block)
    chunked_any = 0
    for doc in marc21_documents(huge=block >= 1 << 20):
        whole = frame_all("marc21", doc, chunked=False)
        parts = frame_all("marc21", doc, chunked=True)
        assert parts[:2] == whole[:2]
        chunked_any += parts[2]
    assert chunked_any >= 20
    if block >= 1 << 20:
        assert [f.raw for f in frame_all("marc21", marc21_documents(True)[-2], chunked=True)[0]].count(None) == 1


def run(src: Path, out: Path, fmt: str, workers: int, rules: str | None = None):
    result = process_file(Input.from_path(src), LocalDestination(out), fmt=fmt, workers=workers, rules_path=rules)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "report.json"}
    return (result.records_in, result.records_out, result.rejected, result.dropped, result.error), files


@pytest.mark.parametrize("index", range(len(xml_documents())))
def test_engine_with_workers_framing_equals_one_process(tmp_path, monkeypatch, index):
    """Two workers framing chunks write what one process framing record by record writes."""
    monkeypatch.setattr(marcxml, "CHUNK_BYTES", 8 << 10)
    doc = xml_documents()[index]
    src = tmp_path / "in.xml"
    src.write_bytes(doc)
    one = run(src, tmp_path / "one", "marcxml", 1)
    two = run(src, tmp_path / "two", "marcxml", 2)
    if one[0][4] is None:
        assert two == one
    else:  # a file-level error: same error; the main output is aborted either way, rejects kept
        assert two[0][4] == one[0][4] and "in.xml" not in two[1]


def test_engine_marc21_with_workers_framing_equals_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(framing, "BLOCK", 8 << 10)  # many chunks
    src = tmp_path / "in.mrc"
    docs = marc21_documents()
    src.write_bytes(docs[0] + b"".join(docs[4:12]))  # plain records, then damaged ones
    for fmt in ("marc21", "marcxml"):
        one = run(src, tmp_path / f"one-{fmt}", fmt, 1)
        assert run(src, tmp_path / f"two-{fmt}", fmt, 2) == one
        assert one[0][2] > 0 and one[0][1] > 100  # rejects were met, and written alike
