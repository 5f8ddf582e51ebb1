"""Realistic Alma-like MARC records for tests and benchmarks, generated (no downloads).

API (stable; other tests use it):
- `records(n, seed=0, *, marc8_safe=False, start=0) -> list[Record]`: bibliographic records with
  Alma's shape: 001 MMS ID, 005, 008, ISBN/OCLC numbers, diacritics and CJK in names and titles,
  long 505/520 notes, repeated subjects with repeated subfields, 856, AVA/AVE availability and 9XX
  local fields. `marc8_safe=True` restricts text to characters MARC-8 can carry (Latin with
  diacritics, ANSEL specials, EACC CJK) so the record has an exact MARC-8 twin.
- `iter_records(n, seed=0, ...)`: the same as a generator (for big benchmark files).
- `write_marcxml(path, records, namespace=True, prefix=None)`: a `<collection>`; `namespace=False`
  writes Alma's un-namespaced form; `prefix="marc"` writes `<marc:collection xmlns:marc=...>`.
- `write_marc21(path, records, marc8=False)`: ISO 2709, UTF-8 (leader/09 `a`) or MARC-8
  (leader/09 blank). Independent of the engine's writer on purpose.
- `write_json(path, records)`: MARC-in-JSON lines.
- `marcxml_bytes / marc21_bytes / json_bytes`: the same, in memory.
- `to_marc8(text) -> bytes`: MARC-8 encoding of text built by `marc8_safe` records.
- `huge_record(seed=0, size=120_000)`: a record whose MARC 21 form exceeds 99,999 bytes.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pymarc import marc8_mapping

from pipeline.marc.record import Field, Record

NS = "http://www.loc.gov/MARC21/slim"

_LATIN_NAMES = ["Müller", "Dvořák", "Łukasiewicz", "García Márquez", "Ørsted", "Þórðarson", "Ibáñez",
                "Čapek", "Kierkegaard", "Næss", "Straße", "Françoise", "Gödel", "Brontë", "Şafak",
                "Smith", "Johnson", "O'Brien", "Nguyễn", "Zoë"]
_LATIN_SAFE = ["Müller", "Dvořák", "Łukasiewicz", "García Márquez", "Ørsted", "Þórðarson", "Ibáñez",
               "Čapek", "Kierkegaard", "Næss", "Françoise", "Gödel", "Brontë", "Smith", "Johnson", "O'Brien",
               "Zoë"]
_GIVEN = ["Anna", "José", "Søren", "Zdeněk", "Chloé", "Hans", "Ingrid", "Mária", "Pål", "Renée"]
_WORDS = ("history of the library catalogue and its records in the modern world a study of "
          "cataloguing practice metadata standards collections access discovery preservation "
          "culture science music art theatre archives maps manuscripts periodicals").split()
_CJK = "中国日本東京大学書図館文化史研究出版社北京上海漢字的人民"
_SUBJECTS = ["Libraries", "Cataloging", "Metadata", "Music", "History", "Art", "Bibliography",
             "Archives", "Information science", "Digital libraries"]
_SUBDIV = ["History", "20th century", "Congresses", "Bibliography", "Catalogs", "Study and teaching"]
_LIBS = [("MAIN", "Main Library", "STACKS", "Stacks"), ("LAW", "Law Library", "REF", "Reference"),
         ("MUS", "Music Library", "SCORES", "Scores")]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _record(i: int, rng: random.Random, marc8_safe: bool) -> Record:
    mms = f"99{100000 + i}{rng.randrange(1000, 9999)}3506421"
    names = _LATIN_SAFE if marc8_safe else _LATIN_NAMES
    author = f"{rng.choice(names)}, {rng.choice(_GIVEN)}"
    title = _text(rng, rng.randint(2, 8)).capitalize()
    if rng.random() < 0.2:
        title += " " + "".join(rng.choice(_CJK) for _ in range(rng.randint(2, 8)))
    if rng.random() < 0.2:
        title += " & " + rng.choice(names) + " <edition>"
    year = rng.randint(1850, 2025)
    f: list[Field] = [
        Field.control("001", mms),
        Field.control("005", f"{rng.randint(2015, 2025)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}120000.0"),
        Field.control("008", f"{rng.randint(10, 99)}0101s{year}    xx a          000 0 eng d"),
        Field("020", " ", " ", [("a", f"978{rng.randrange(10**9, 10**10)}"), ("q", "(hardback)")]),
        Field("035", " ", " ", [("a", f"(OCoLC){rng.randrange(10**6, 10**9)}")]),
        Field("035", " ", " ", [("a", f"(EXLNZ-01ALMA_NETWORK){mms[:-4]}0001")]),
        Field("040", " ", " ", [("a", "DLC"), ("b", "eng"), ("e", "rda"), ("c", "DLC"), ("d", "OCoLC")]),
        Field("100", "1", " ", [("a", author + ","), ("e", "author.")]),
        Field("245", "1", "0", [("a", title + " :"), ("b", _text(rng, rng.randint(3, 9)) + " /"),
                                ("c", f"by {author}.")]),
        Field("264", " ", "1", [("a", "Praha :"), ("b", "Nakladatelství Čs. akademie,"), ("c", f"{year}.")]),
        Field("300", " ", " ", [("a", f"{rng.randint(20, 900)} pages :"), ("b", "illustrations ;"),
                                ("c", "24 cm")]),
        Field("336", " ", " ", [("a", "text"), ("b", "txt"), ("2", "rdacontent")]),
        Field("337", " ", " ", [("a", "unmediated"), ("b", "n"), ("2", "rdamedia")]),
        Field("338", " ", " ", [("a", "volume"), ("b", "nc"), ("2", "rdacarrier")]),
    ]
    if rng.random() < 0.5:
        f.append(Field("500", " ", " ", [("a", _text(rng, rng.randint(5, 40)) + ".")]))
    if rng.random() < 0.3:  # long contents note, repeated $t
        f.append(Field("505", "0", "0", [(c, _text(rng, rng.randint(4, 12)) + " --")
                                         for c in "tr" * rng.randint(5, 60)]))
    if rng.random() < 0.2:
        f.append(Field("520", " ", " ", [("a", _text(rng, rng.randint(50, 300)) + ".")]))
    for _ in range(rng.randint(1, 5)):
        subs = [("a", rng.choice(_SUBJECTS))]
        subs += [("x", rng.choice(_SUBDIV)) for _ in range(rng.randint(0, 3))]
        f.append(Field("650", " ", "0", subs))
    for _ in range(rng.randint(0, 3)):
        f.append(Field("700", "1", " ", [("a", f"{rng.choice(names)}, {rng.choice(_GIVEN)},"), ("e", "editor.")]))
    if rng.random() < 0.3:
        f.append(Field("856", "4", "1", [("u", f"https://example.org/item/{mms}?a=1&b=2"), ("z", "Online")]))
    for _ in range(rng.randint(1, 3)):
        code, lib, loc, locname = rng.choice(_LIBS)
        f.append(Field("AVA", " ", " ", [("8", f"22{rng.randrange(10**12, 10**13)}"), ("a", "01ALMA_INST"),
                                         ("b", code), ("c", locname), ("d", f"QA{rng.randint(1, 999)} .B{year}"),
                                         ("e", "available"), ("f", str(rng.randint(1, 4))), ("g", "0"),
                                         ("j", loc), ("q", lib)]))
    if rng.random() < 0.2:
        f.append(Field("AVE", " ", " ", [("8", f"53{rng.randrange(10**12, 10**13)}"), ("c", "Available"),
                                         ("l", "01ALMA_INST"), ("m", "Academic Complete"),
                                         ("u", "https://example.org/portfolio")]))
    f.append(Field("970", " ", " ", [("a", "local"), ("b", f"batch {rng.randint(1, 40)}")]))
    f.append(Field("999", "f", "f", [("i", mms), ("s", str(i))]))
    return Record("00000nam a2200000 i 4500", f)


def iter_records(n: int, seed: int = 0, *, marc8_safe: bool = False, start: int = 0) -> Iterator[Record]:
    """`n` records, deterministic for a seed."""
    rng = random.Random(seed)
    for i in range(start, start + n):
        yield _record(i, rng, marc8_safe)


def records(n: int, seed: int = 0, *, marc8_safe: bool = False, start: int = 0) -> list[Record]:
    return list(iter_records(n, seed, marc8_safe=marc8_safe, start=start))


def huge_record(seed: int = 0, size: int = 120_000) -> Record:
    """A record over MARC 21's 99,999-byte limit (many fields, each under 9,999 bytes)."""
    rec = _record(0, random.Random(seed), False)
    rng = random.Random(seed + 1)
    while sum(len(v) for f in rec.fields for _, v in (f.subfields or [])) < size:
        rec.fields.append(Field("590", " ", " ", [("a", _text(rng, 1000)[:8000])]))
    return rec


# --- MARCXML -------------------------------------------------------------------------------------
def _xml_record(rec: Record, p: str) -> str:
    out = [f"<{p}record>", f"<{p}leader>{escape(rec.leader)}</{p}leader>"]
    for f in rec.fields:
        if f.subfields is None:
            out.append(f"<{p}controlfield tag={quoteattr(f.tag)}>{escape(f.value or '')}</{p}controlfield>")
        else:
            out.append(f"<{p}datafield tag={quoteattr(f.tag)} ind1={quoteattr(f.ind1)} ind2={quoteattr(f.ind2)}>")
            out.extend(f"<{p}subfield code={quoteattr(c)}>{escape(v)}</{p}subfield>" for c, v in f.subfields)
            out.append(f"</{p}datafield>")
    out.append(f"</{p}record>")
    return "".join(out)


def iter_marcxml(recs: Iterable[Record], namespace: bool = True, prefix: str | None = None) -> Iterator[bytes]:
    p = f"{prefix}:" if prefix else ""
    decl = f' xmlns:{prefix}="{NS}"' if prefix else (f' xmlns="{NS}"' if namespace else "")
    yield f'<?xml version="1.0" encoding="UTF-8"?>\n<{p}collection{decl}>\n'.encode()
    for rec in recs:
        yield (_xml_record(rec, p) + "\n").encode("utf-8")
    yield f"</{p}collection>\n".encode()


def marcxml_bytes(recs: Iterable[Record], namespace: bool = True, prefix: str | None = None) -> bytes:
    return b"".join(iter_marcxml(recs, namespace, prefix))


def write_marcxml(path: str | Path, recs: Iterable[Record], namespace: bool = True, prefix: str | None = None) -> Path:
    path = Path(path)
    with open(path, "wb") as fh:
        for chunk in iter_marcxml(recs, namespace, prefix):
            fh.write(chunk)
    return path


# --- MARC 21 ---------------------------------------------------------------------------------------
def marc21_record(rec: Record, marc8: bool = False) -> bytes:
    enc = to_marc8 if marc8 else (lambda s: s.encode("utf-8"))
    directory, data = [], []
    pos = 0
    for f in rec.fields:
        if f.subfields is None:
            body = enc(f.value or "") + b"\x1e"
        else:
            subs = b"".join(b"\x1f" + c.encode() + enc(v) for c, v in f.subfields)
            body = (f.ind1 + f.ind2).encode() + subs + b"\x1e"
        directory.append(f"{f.tag}{len(body):04d}{pos:05d}".encode())
        data.append(body)
        pos += len(body)
    base = 24 + 12 * len(directory) + 1
    total = base + pos + 1
    leader = f"{total % 100000:05d}{rec.leader[5:9]}{' ' if marc8 else 'a'}22{base:05d}{rec.leader[17:20]}4500"
    return leader.encode() + b"".join(directory) + b"\x1e" + b"".join(data) + b"\x1d"


def marc21_bytes(recs: Iterable[Record], marc8: bool = False) -> bytes:
    return b"".join(marc21_record(r, marc8) for r in recs)


def write_marc21(path: str | Path, recs: Iterable[Record], marc8: bool = False) -> Path:
    path = Path(path)
    with open(path, "wb") as fh:
        for rec in recs:
            fh.write(marc21_record(rec, marc8))
    return path


# --- MARC-in-JSON lines ------------------------------------------------------------------------------
def json_line(rec: Record) -> bytes:
    fields = [{f.tag: f.value} if f.subfields is None else
              {f.tag: {"ind1": f.ind1, "ind2": f.ind2, "subfields": [{c: v} for c, v in f.subfields]}}
              for f in rec.fields]
    return json.dumps({"leader": rec.leader, "fields": fields}, ensure_ascii=False).encode() + b"\n"


def json_bytes(recs: Iterable[Record]) -> bytes:
    return b"".join(json_line(r) for r in recs)


def write_json(path: str | Path, recs: Iterable[Record]) -> Path:
    path = Path(path)
    path.write_bytes(json_bytes(recs))
    return path


# --- MARC-8 ------------------------------------------------------------------------------------------
_ANSEL = {u: b for b, (u, _c) in marc8_mapping.CODESETS[0x45].items() if b >= 0xA0}
_EACC: dict[int, int] = {}
for _code, (_u, _c) in sorted(marc8_mapping.CODESETS[0x31].items()):
    _EACC.setdefault(_u, _code)


def to_marc8(text: str) -> bytes:
    """Encode text as MARC-8: ASCII, ANSEL (combining marks before their letter) and EACC for CJK."""
    out = bytearray()
    cjk = False
    chars = unicodedata.normalize("NFD", text)
    i = 0
    while i < len(chars):
        ch = chars[i]
        marks = []
        j = i + 1
        while j < len(chars) and unicodedata.combining(chars[j]):
            marks.append(chars[j])
            j += 1
        code = ord(ch)
        if code in _EACC and code >= 0x3000:
            if not cjk:
                out += b"\x1b$1"
                cjk = True
            out += _EACC[code].to_bytes(3, "big")
            i = j
            continue
        if cjk:
            out += b"\x1b(B"
            cjk = False
        for m in marks:
            if ord(m) not in _ANSEL:
                raise ValueError(f"no MARC-8 for combining {m!r}")
            out.append(_ANSEL[ord(m)])
        if code < 0x80:
            out.append(code)
        elif code in _ANSEL:
            out.append(_ANSEL[code])
        else:
            raise ValueError(f"no MARC-8 for {ch!r}")
        i = j
    if cjk:
        out += b"\x1b(B"
    return bytes(out)
