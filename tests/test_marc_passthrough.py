"""The pass-throughs (MARC 21 -> MARC 21 and MARCXML -> MARCXML without rules) give exactly the bytes
of the full parse + encode path, and leave every record they cannot vouch for to that path."""

from __future__ import annotations

import random
from pathlib import Path

import marcgen
import pytest

from pipeline.destinations.local import LocalDestination
from pipeline.marc import engine, marc21, marcxml
from pipeline.marc.engine import Input, process_file
from pipeline.marc.record import Field, Record, RecordError
from pipeline.rules import load_rules

UTF8 = ("UTF-8", b"")


def full_marc21(raw: bytes) -> bytes | str:
    """What the full path makes of one record: output bytes, or the reject reason."""
    try:
        return marc21.Marc21Encoder().encode(marc21.parse_marc21(raw))
    except RecordError as exc:
        return str(exc)


def full_marcxml(raw: bytes) -> bytes | str:
    [item] = marcxml.parse_marcxml_batch(UTF8, [raw])
    if isinstance(item, RecordError):
        return str(item)
    encoder = marcxml.MarcXmlEncoder()
    data = encoder.encode(item)
    return data if not encoder.counters["control_chars_removed"] else "changed"


def mutate(raw: bytes, rng: random.Random, alphabet: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(out))
        choice = rng.random()
        if choice < 0.6:
            out[pos] = rng.choice(alphabet)
        elif choice < 0.8:
            out.insert(pos, rng.choice(alphabet))
        else:
            del out[pos]
    return bytes(out)


def marc21_samples() -> list[bytes]:
    recs = marcgen.records(60, seed=21)
    blobs = [marcgen.marc21_record(r) for r in recs]
    samples = list(blobs)
    samples += [marcgen.marc21_record(r, marc8=True) for r in marcgen.records(20, seed=22, marc8_safe=True)]
    samples.append(marcgen.marc21_record(marcgen.huge_record()))  # over 99,999 bytes: rejected
    b = blobs[0]
    samples += [
        b"99999" + b[5:],  # wrong record length (recomputed: still written)
        b[:12] + b"99999" + b[17:],  # wrong base address
        b[:9] + b" " + b[10:],  # leader/09 blank but UTF-8 data
        b[:10] + b"xx" + b[12:20] + b"9999" + b[24:],  # odd leader/10-11 and 20-23
        b[:-2] + b"  \x1e\x1d",  # blanks after the last field: not a pass-through (written without them)
        b[:-1] + b" \x1d",
        b[:-2] + b"\x1d",  # no field terminator at the end
        b[:30] + b"7" + b[31:],  # a directory length off by some
        b[:35] + b"1" + b[36:],  # a directory offset off
        b.replace(b"\x1fa", b"\x1f\x1fa", 1),  # empty subfield
        b.replace(b"\x1e  \x1fa", b"\x1e \x1f\x1fa", 1),  # delimiter as indicator
        b.replace(b"\x1e  \x1fa", b"\x1e\xc3\xa9 \x1fa", 1),  # non-ASCII indicator
        b"00026nam a2200025 i 4500\x1e\x1d",  # no fields at all
        b[:5] + b"\xff" + b[6:],  # leader not ASCII
        b[:24] + b"\x1e\x1d",
    ]
    # built records: field over 9,999 bytes, delimiter in a control field, short data fields
    base = recs[1]
    for extra in (Field("500", " ", " ", [("a", "x" * 10_000)]), Field.control("009", "a\x1fb"),
                  Field("500", " ", " ", []), Field("500", "1", " ", [("a", "")]),
                  Field("500", "\x1f", " ", [("a", "x")]), Field("00A", " ", " ", [("a", "x")])):
        samples.append(marcgen.marc21_record(Record(base.leader, [*base.fields, extra])))
    samples.append(marc21_with_piece(blobs[2], b"5"))  # a data field of one byte: no indicators
    samples.append(marc21_with_piece(blobs[2], b"\xc3\xa9"))  # one (two-byte) character
    return samples


def marc21_with_piece(blob: bytes, piece: bytes) -> bytes:
    """`blob` with a 590 field holding exactly `piece` appended (directory kept consistent)."""
    rec = marc21.parse_marc21(blob)
    body = marc21.Marc21Encoder().encode(rec)
    dir_end = body.index(b"\x1e")
    data = body[dir_end + 1:-1] + piece + b"\x1e"
    entry = b"590%04d%05d" % (len(piece) + 1, len(body) - dir_end - 2)
    directory = body[24:dir_end] + entry
    total = 24 + len(directory) + 1 + len(data) + 1
    leader = b"%05d" % total + body[5:12] + b"%05d" % (24 + len(directory) + 1) + body[17:24]
    return leader + directory + b"\x1e" + data + b"\x1d"


def test_marc21_passthrough_equals_the_full_path():
    samples = marc21_samples()
    rng = random.Random(5)
    plain = samples[:60]
    samples += [mutate(rng.choice(plain), rng, b"\x1d\x1e\x1f0123456789 a\x80\xc3\xff") for _ in range(3000)]
    taken = 0
    for raw in samples:
        fast = marc21.passthrough_marc21(raw)
        if fast is not None:
            taken += 1
            assert fast == full_marc21(raw), raw[:80]
    assert all(marc21.passthrough_marc21(b) is not None for b in plain), "plain records pass through"
    assert taken > 500


def marcxml_samples() -> list[bytes]:
    recs = marcgen.records(60, seed=23)
    encoder = marcxml.MarcXmlEncoder()
    canonical = [encoder.encode(r)[:-1] for r in recs]
    samples = list(canonical)
    samples += marcgen.marcxml_bytes(recs[:10], namespace=False).splitlines()[2:-1]  # Alma's form
    samples += marcgen.marcxml_bytes(recs[:5], prefix="marc").splitlines()[2:-1]  # rewritten without prefix
    c = canonical[0]
    samples += [
        c.replace(b"</controlfield>", b"</controlfield>\n", 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">&quot;', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">&#49;', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">&apos;&amp;&lt;&gt;', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">a\r\nb', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">a\nb\tc', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">x\x01', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">x\xef\xbf\xbe', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">x\xff', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a">x>y', 1),
        c.replace(b'<subfield code="a">', b'<subfield code="a"><![CDATA[x]]>', 1),
        c.replace(b'ind1=" "', b'ind1=""', 1),
        c.replace(b'ind1=" "', b'ind1="&amp;"', 1),
        c.replace(b'<leader>', b'<leader>&amp;', 1),
        c.replace(b"<leader>", b'<leader>\xc3\xa9', 1),
        c.replace(b"<record>", b'<record type="Bibliographic">', 1),
        c.replace(b"<record>", b'<record xmlns="http://www.loc.gov/MARC21/slim">', 1),
        c.replace(b"</leader>", b"</leader><leader>x</leader>", 1),
        c.replace(b"<leader>00", b"<!-- c --><leader>00", 1),
        c.replace(b'<subfield code="a">', b'<subfield code="">', 1),
        b'<record><leader>x</leader><datafield tag="500" ind1=" " ind2=" "></datafield></record>',
        b'<record><leader>x</leader><datafield tag="500" ind1=" " ind2=" "/></record>',
        b'<record><leader></leader><controlfield tag="001"></controlfield></record>',
        b"<record></record>",
    ]
    return samples


def reshaped_marcxml() -> list[bytes]:
    """Records the full path reads the same but that are not in the writer's form: written by pymarc
    (attributes `ind1 ind2 tag`), indented by lxml, with Princeton's line breaks, multi-letter codes."""
    import io

    import pymarc
    from lxml import etree

    recs = marcgen.records(20, seed=24)
    buf = io.BytesIO()
    writer = pymarc.XMLWriter(buf)
    for blob in (marcgen.marc21_record(r) for r in recs):
        writer.write(pymarc.Record(data=blob, to_unicode=True, force_utf8=True))
    writer.close(close_fh=False)
    tree = etree.fromstring(buf.getvalue())
    pymarc_form = [etree.tostring(el, encoding="utf-8", with_tail=False) for el in tree]
    etree.indent(tree)
    indented = [etree.tostring(el, encoding="utf-8", with_tail=False) for el in tree]
    canonical = [marcxml.MarcXmlEncoder().encode(r)[:-1] for r in recs]
    princeton = [c.replace(b"</leader>", b"</leader>\n").replace(b"</controlfield>", b"</controlfield>\n")
                 for c in canonical]
    codes = [c.replace(b'<subfield code="a">', b'<subfield code="aa">', 1) for c in canonical]
    return pymarc_form + indented + princeton + codes


def test_marcxml_passthrough_takes_reshaped_records_and_equals_the_full_path():
    reshaped = reshaped_marcxml()
    # each rewritten record is the full path's output (pymarc's own output does not always read back the
    # same: it has no namespace on `record` here, so it is rewritten too)
    assert all(marcxml.passthrough_marcxml(b) == full_marcxml(b) for b in reshaped)
    assert all(marcxml.passthrough_marcxml(b) is not None for b in reshaped), "reshaped records pass through"
    rng = random.Random(10)
    taken = 0
    for _ in range(3000):
        raw = mutate(rng.choice(reshaped), rng, b'<>&";/= \r\n\t\x01\x1f\xc3\xa9\xffampltgind12tag#')
        fast = marcxml.passthrough_marcxml(raw)
        if fast is not None:
            taken += 1
            assert fast == full_marcxml(raw), raw[:80]
    assert taken > 300


def test_marcxml_passthrough_equals_the_full_path():
    samples = marcxml_samples()
    assert all(marcxml.passthrough_marcxml(b) is not None for b in samples[:75]), "writer's form passes through"
    assert marcxml.writer_form(samples[0]) is samples[0] and marcxml.writer_form(samples[70]) != samples[70]
    rng = random.Random(6)
    prefixed = samples[70:75] + [c.replace(b"<record>", b'<record xmlns="http://www.loc.gov/MARC21/slim">', 1)
                                 for c in samples[:5]]
    samples += [p.replace(b"<marc:leader>", b"<leader>", 1) for p in samples[70:75]]  # prefix not on every tag
    samples += [p.replace(b"</marc:leader>", b"</leader>", 1) for p in samples[70:75]]
    samples += [mutate(rng.choice(samples[:60]), rng, b'<>&";/ \r\n\t\x01\x1f\xc3\xa9\xffampltg#')
                for _ in range(3000)]
    samples += [mutate(rng.choice(prefixed), rng, b'<>&";/: \t\x01\xc3\xa9\xffmarc') for _ in range(2000)]
    taken = 0
    for raw in samples:
        fast = marcxml.passthrough_marcxml(raw)
        if fast is not None:
            taken += 1
            assert fast == full_marcxml(raw), raw[:80]
    assert taken > 300


def run_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path, fmt: str, workers: int) -> None:
    """The engine's outputs (records, rejects, reasons) are the same with and without the pass-through."""
    fast = process_file(Input.from_path(src), LocalDestination(tmp_path / "fast"), fmt=fmt, workers=workers)
    monkeypatch.setattr(engine, "_passthrough", lambda *args: None)
    slow = process_file(Input.from_path(src), LocalDestination(tmp_path / "slow"), fmt=fmt, workers=workers)
    assert (fast.records_in, fast.records_out, fast.rejected, fast.counters) == \
        (slow.records_in, slow.records_out, slow.rejected, slow.counters)
    names = sorted(p.name for p in (tmp_path / "slow").iterdir() if p.name != "report.json")
    assert names == sorted(p.name for p in (tmp_path / "fast").iterdir() if p.name != "report.json")
    for name in names:
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes(), name


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_marc21_same_bytes_with_and_without_passthrough(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 16)
    samples = marc21_samples()
    rng = random.Random(7)
    samples += [mutate(rng.choice(samples[:60]), rng, b"\x1e\x1f0123456789 a\x80\xc3\xff") for _ in range(200)]
    src = tmp_path / "in.mrc"
    src.write_bytes(b"".join(samples))
    run_both(tmp_path, monkeypatch, src, "marc21", workers)
    assert (tmp_path / "fast" / "in.rejects.jsonl").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_marcxml_same_bytes_with_and_without_passthrough(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 16)
    samples = [s for s in marcxml_samples() if b"\r" not in s] + reshaped_marcxml()
    rng = random.Random(8)
    mutants = [mutate(rng.choice(samples[:60]), rng, b'<>&";/ \t\x01\x1f\xc3\xa9\xffampltg#') for _ in range(300)]
    # keep the document framable: only mutants that still look like one record element
    samples += [m for m in mutants if m.startswith(b"<record>") and m.endswith(b"</record>")
                and m.count(b"<record") == 1 and m.count(b"</record") == 1 and b"<!" not in m and b"<?" not in m]
    src = tmp_path / "in.xml"
    src.write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n<collection>\n' + b"\n".join(samples)
                    + b"\n</collection>\n")
    run_both(tmp_path, monkeypatch, src, "marcxml", workers)
    assert (tmp_path / "fast" / "in.rejects.jsonl").exists()


def test_no_passthrough_with_rules_or_a_record_sink_or_another_format(tmp_path):
    work = engine.Work("marc21", None, None)
    assert engine._passthrough(work, "marc21", None, False) == (marc21.passthrough_marc21, b"")
    assert engine._passthrough(work, "marc21", None, True) is None  # the sink wants Records
    assert engine._passthrough(work, "marcxml", UTF8, False) is None
    xml = engine.Work("marcxml", None, None)
    assert engine._passthrough(xml, "marcxml", UTF8, False) == (marcxml.writer_form, b"\n")
    assert engine._passthrough(xml, "marcxml", ("ISO-8859-1", b""), False) is None
    assert engine._passthrough(engine.Work("json", None, None), "marc21", None, False) is None
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - remove: 9XX\n")
    assert engine._passthrough(engine.Work("marc21", None, load_rules(rules)), "marc21", None, False) is None


@pytest.mark.parametrize("workers", [1, 2])
def test_engine_prefixed_marcxml_same_bytes_with_and_without_passthrough(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(engine, "BATCH_RECORDS", 16)
    recs = marcgen.records(100, seed=9)
    recs[5].fields[0].value = "bad\x01control"  # removed and counted: the full path
    data = marcgen.marcxml_bytes(recs, prefix="marc")
    data = data.replace(b"<marc:leader>", b"<leader>", 1)  # one record mixes forms: the full path
    src = tmp_path / "in.xml"
    src.write_bytes(data)
    run_both(tmp_path, monkeypatch, src, "marcxml", workers)
