"""Real-data conformance: the engine's view of every record against independent readers.

For one corpus file: expand its containers with the standard library, read every member with pymarc
(and with `yaz-marcdump` where pymarc cannot read a record and yaz is installed), run the engine to
MARCXML, MARC 21 and MARC-in-JSON, read each output back with pymarc, and compare record by record
(leader except the positions docs/formats.md says are recomputed, every control field, every data
field's tag, indicators, codes and values, in order). Then the round trip MARCXML -> MARC 21 ->
MARCXML through the engine must give back the first MARCXML. Every input record must be written or
rejected with a reason code, and a rejected record's original bytes must be in the rejects file.

The oracle applies only the policy of docs/formats.md ("Readers" and "What changes between input and
output"), each rule a line below, so a difference it does not explain is a failure:
- binary MARC: ESC anywhere means MARC-8; otherwise leader/09 `a` or bytes that are valid UTF-8 mean
  UTF-8; else MARC-8 (pymarc's converter; the engine rejects what pymarc would turn into spaces);
- binary MARC: a 00X field whose data starts with two indicators and a subfield delimiter is a data
  field (as yaz reads it);
- MARCXML output: characters XML 1.0 forbids are removed (and counted);
- leader/00-04, 09 and 12-16 are recomputed by every writer, and /10-11 and /20-23 by MARC 21.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import warnings
import zipfile
from pathlib import Path
from typing import Any

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
FORMATS = ("marcxml", "marc21", "json")

# File-level refusals docs/formats.md states: an XML document whose root is neither `collection` nor
# `record` (Alma API and SRU responses wrap records in their own elements) is not an export file.
# So is a JSON document that is not MARC-in-JSON lines (an array, or a record over several lines).
EXPLAINED_FILE_ERRORS = ("XML root element is <", "a JSON document (an array, or a record over several lines)")
# a record as compared: (leader, ((tag, None, value) | (tag, ind1 + ind2, ((code, value), ...)), ...))
View = tuple[str, tuple]
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SPACE = b" \t\r\n\x00"


# --- containers (standard library only, so the engine's unwrapping is checked too) --------------------
def members(name: str, data: bytes, depth: int = 0) -> list[tuple[str, bytes]]:
    if depth > 3:
        return [(name, data)]
    if data.startswith(b"\x1f\x8b"):
        return members(name.rsplit(".", 1)[0], gzip.decompress(data), depth + 1)
    if data.startswith(b"BZh"):
        return members(name.rsplit(".", 1)[0], bz2.decompress(data), depth + 1)
    if data.startswith(b"\xfd7zXZ\x00"):
        return members(name.rsplit(".", 1)[0], lzma.decompress(data), depth + 1)
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        out = []
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    out.extend(members(f"{name}/{info.filename}", archive.read(info), depth + 1))
        return out
    if len(data) >= 262 and data[257:262] == b"ustar":
        out = []
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                if info.isfile():
                    out.extend(members(f"{name}/{info.name}", tar.extractfile(info).read(), depth + 1))
        return out
    return [(name, data)]


def kind_of(data: bytes) -> str:
    head = data.lstrip(b"\xef\xbb\xbf").lstrip(_SPACE)[:1]
    if not head:
        return "empty"
    return {b"<": "marcxml", b"{": "json", b"[": "json"}.get(head, "marc21")


# --- views ---------------------------------------------------------------------------------------------
class Unrepresentable(ValueError):
    """pymarc has no way to show this record (a 00X data field read from MARCXML loses its subfields)."""


def view_pymarc(record: Any) -> View:
    fields = []
    for f in record.fields:
        if f.is_control_field():
            if f.data is None:
                raise Unrepresentable(f"pymarc lost the subfields of data field {f.tag}")
            if f.data[2:3] == "\x1f":  # a 00X data field in binary MARC (indicators, delimiter)
                fields.append((f.tag, f.data[:2], tuple((p[:1], p[1:]) for p in f.data[3:].split("\x1f") if p)))
                continue
            fields.append((f.tag, None, f.data))
        else:
            fields.append((f.tag, (f.indicator1 or " ") + (f.indicator2 or " "),
                           tuple((s.code, s.value) for s in f.subfields)))
    return str(record.leader), tuple(fields)


def _clean(text: str | None) -> str | None:
    return None if text is None else _ILLEGAL.sub("", text)


def leader_key(leader: str, fmt: str) -> str:
    """The leader positions a writer keeps (docs/formats.md): all but 00-04, 09, 12-16 (and, for
    MARC 21, 10-11 and 20-23, which it recomputes)."""
    if fmt == "marc21":
        return leader[5:9] + leader[17:20]
    return leader[5:9] + leader[10:12] + leader[17:]


def expected_for(view: View, fmt: str) -> View:
    leader, fields = view
    if fmt == "marcxml":  # XML 1.0 cannot hold these: removed and counted
        fields = tuple((t, i, _clean(v)) if i is None
                       else (t, _clean(i), tuple((_clean(c), _clean(x)) for c, x in v))
                       for t, i, v in fields)
        leader = _clean(leader)
    return leader_key(leader, fmt), fields


# --- oracle readers --------------------------------------------------------------------------------------
def frames_marc21(data: bytes) -> list[bytes]:
    """Records cut on 0x1D, blanks and NULs between them skipped (a trailing unterminated piece kept)."""
    out = []
    for piece in data.split(b"\x1d"):
        piece = piece.lstrip(_SPACE)
        if piece.strip(_SPACE):
            out.append(piece + b"\x1d")
    if out and not data.rstrip(_SPACE).endswith(b"\x1d"):
        out[-1] = out[-1][:-1]
    return out


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def marc21_charset(raw: bytes) -> str:
    if b"\x1b" in raw:
        return "marc8"
    if raw[9:10] == b"a" or _utf8(raw[24:]):
        return "utf8"
    return "marc8"


def framed_as_read(raw: bytes) -> bytes:
    """The record with leader/00-04 and 12-16 saying what the bytes hold: records are framed on 0x1D
    and data starts after the directory's 0x1E (docs/formats.md); pymarc and yaz trust the leader."""
    end = raw.find(b"\x1e", 24)
    if end < 0 or len(raw) > 99999:
        return raw
    return b"%05d" % len(raw) + raw[5:12] + b"%05d" % (end + 1) + raw[17:]


def pymarc_marc21(raw: bytes) -> View | None:
    """One binary record through pymarc's directory-based decoder; None when pymarc cannot read it."""
    import pymarc
    from pymarc.marc8 import MARC8ToUnicode

    charset = marc21_charset(raw)
    if not directory_consistent(raw):
        return None  # pymarc would read wherever the directory points: not an oracle for this record
    if charset == "utf8" and re.search(rb"\x1f[\x80-\xff]", raw):
        return None  # pymarc "normalises" a multi-byte subfield code: it cannot say what the record holds
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = pymarc.Record(raw, to_unicode=False)
    except Exception:
        return None
    complaints = io.StringIO()

    def text(value: bytes) -> str:
        if charset == "utf8":
            return value.decode("utf-8")
        if value.isascii() and b"\x1b" not in value:
            return value.decode("ascii")  # the same in MARC-8 (G0 is ASCII), without pymarc's cost
        with contextlib.redirect_stderr(complaints):
            out = MARC8ToUnicode(quiet=False).translate(value)
        if complaints.getvalue():  # pymarc wrote a space for a character it could not map
            raise ValueError("pymarc could not map a MARC-8 character")
        return out

    try:
        fields = []
        for f in record.fields:
            if f.is_control_field():
                value = f.data
                if len(value) >= 3 and value[2:3] == b"\x1f":  # a 00X data field (indicators, delimiter)
                    subs = tuple((p[:1].decode("ascii"), text(p[1:])) for p in value[3:].split(b"\x1f") if p)
                    fields.append((f.tag, value[:2].decode("ascii"), subs))
                else:
                    fields.append((f.tag, None, text(value)))
            else:
                fields.append((f.tag, (f.indicator1 or " ") + (f.indicator2 or " "),
                               tuple((s.code, text(s.value)) for s in f.subfields)))
    except (UnicodeDecodeError, ValueError):
        return None
    return str(record.leader), tuple(fields)


def directory_consistent(raw: bytes) -> bool:
    """Whether every directory entry lies inside the data and ends on a field terminator (then the
    directory is the truth; otherwise readers disagree, and the engine salvages by terminators)."""
    end = raw.find(b"\x1e", 24)
    if end < 0 or (end - 24) % 12:
        return False
    base = end + 1
    for i in range(24, end, 12):
        entry = raw[i:i + 12]
        if not entry[3:12].isdigit():
            return False
        length, offset = int(entry[3:7]), int(entry[7:12])
        last = base + offset + length - 1
        if length < 1 or last >= len(raw) - 1 or raw[last] != 0x1E:
            return False
    return True


def yaz_available() -> bool:
    return shutil.which("yaz-marcdump") is not None


def yaz_read(data: bytes, kind: str, charset: str = "utf8") -> list[View] | None:
    """Records as yaz-marcdump reads them (converted to MARCXML, then read by pymarc)."""
    if not yaz_available():
        return None

    args = ["yaz-marcdump", "-i", {"marc21": "marc", "marcxml": "marcxml", "json": "json"}[kind], "-o", "marcxml"]
    if kind == "marc21" and charset == "marc8":
        args += ["-f", "marc8", "-t", "utf8"]
    with tempfile.NamedTemporaryFile(suffix=".in") as fh:
        fh.write(data)
        fh.flush()
        done = subprocess.run([*args, fh.name], capture_output=True, timeout=60)
    if done.returncode != 0 or b"<record" not in done.stdout:
        return None
    try:
        views = view_etree(done.stdout)
    except Exception:
        return None
    if charset == "marc8":  # yaz writes MARC-8 text decomposed, with ligatures as one double diacritic
        views = [_as_loc_table(v) for v in views]
    return views


def view_json(obj: dict) -> View:
    fields = []
    for item in obj["fields"]:
        ((tag, body),) = item.items()
        if isinstance(body, str):
            fields.append((tag, None, body))
        else:
            fields.append((tag, body["ind1"] + body["ind2"],
                           tuple(next(iter(s.items())) for s in body["subfields"])))
    return obj["leader"], tuple(fields)


def view_etree(xml: bytes) -> list[View]:
    """MARCXML (as yaz writes it) read with the standard library: pymarc cannot hold 00X data fields."""
    import xml.etree.ElementTree as ET

    ns = "{http://www.loc.gov/MARC21/slim}"
    out = []
    for rec in ET.fromstring(xml).iter(ns + "record"):
        leader = ""
        fields: list[tuple] = []
        for el in rec:
            if el.tag == ns + "leader":
                leader = el.text or ""
            elif el.tag == ns + "controlfield":
                fields.append((el.get("tag"), None, el.text or ""))
            elif el.tag == ns + "datafield":
                fields.append((el.get("tag"), (el.get("ind1") or " ") + (el.get("ind2") or " "),
                               tuple((sf.get("code"), sf.text or "") for sf in el)))
        out.append((leader, tuple(fields)))
    return out


_DOUBLE = re.compile("(.)([\u0360\u0361])(.)", re.S)


def _loc(text: str) -> str:
    """MARC-8 text in the form docs/formats.md gives it: NFC, with ligature and double-tilde halves as
    LoC's table maps them (U+FE20/FE21, U+FE22/FE23), where yaz writes one double diacritic."""
    def halves(m: re.Match[str]) -> str:
        left, right = ("\ufe20", "\ufe21") if m.group(2) == "\u0361" else ("\ufe22", "\ufe23")
        return m.group(1) + left + m.group(3) + right
    return unicodedata.normalize("NFC", _DOUBLE.sub(halves, unicodedata.normalize("NFD", text)))


def _as_loc_table(view: View) -> View:
    leader, fields = view
    return leader, tuple((t, i, _loc(v)) if i is None else (t, i, tuple((c, _loc(x)) for c, x in v))
                         for t, i, v in fields)


def oracle(data: bytes, kind: str) -> tuple[list[View | None] | None, str]:
    """The records of one member as independent readers see them: (records, reader). A record is None
    where no independent reader can read it; the list is None when the member is unreadable as a whole."""
    import pymarc

    if kind == "empty":
        return [], "none"
    if kind == "marc21":
        out: list[View | None] = []
        used = "pymarc"
        for raw in frames_marc21(data):
            raw = framed_as_read(raw)
            view = pymarc_marc21(raw) if raw.endswith(b"\x1d") else None
            if view is None and raw.endswith(b"\x1d") and directory_consistent(raw):
                # (with an inconsistent directory, yaz reads wherever it points, as pymarc does: the
                # engine's salvage by terminators has no independent oracle and counts as unverified)
                found = yaz_read(raw, "marc21", marc21_charset(raw))
                if found is not None and len(found) == 1:
                    view, used = found[0], "pymarc+yaz"
            out.append(view)
        return out, used
    if kind == "marcxml":
        try:
            records = pymarc.parse_xml_to_array(io.BytesIO(data), strict=False)
            return [view_pymarc(r) for r in records], "pymarc"
        except Unrepresentable:
            found = yaz_read(data, "marcxml")
            return (found, "yaz") if found is not None else (None, "none")
        except Exception:
            return xml_by_record(data), "pymarc per record"
    # MARC-in-JSON lines (the engine's JSON input), else one JSON document
    lines = [line for line in data.split(b"\n") if line.strip(_SPACE)]
    out = []
    for line in lines:
        try:
            out.extend(view_pymarc(r) for r in pymarc.JSONReader(line.decode("utf-8")))
        except Exception:
            out.append(None)
    if len(lines) > 1 and all(v is None for v in out):
        try:  # one pretty-printed document: the engine reads JSON lines only (docs/formats.md)
            return [None] * len(lines), f"json document of {len(list(pymarc.JSONReader(data.decode('utf-8'))))}"
        except Exception:
            pass
    return out, "pymarc"


_XML_RECORD = re.compile(rb"<(?:[\w.\-]+:)?record[\s>].*?</(?:[\w.\-]+:)?record\s*>", re.S)
_XML_ROOT = re.compile(rb"<(?:[\w.\-]+:)?collection\b[^>]*>")


def xml_by_record(data: bytes) -> list[View | None]:
    """A document pymarc refuses as a whole (one broken record), read one record element at a time,
    each wrapped in the document's own root element so its namespaces hold."""
    import pymarc

    root = _XML_ROOT.search(data)
    head = root.group(0) if root else b"<collection>"
    name = head[1:].split(None, 1)[0].rstrip(b">")
    out: list[View | None] = []
    for m in _XML_RECORD.finditer(data):
        doc = b'<?xml version="1.0" encoding="UTF-8"?>' + head + m.group(0) + b"</" + name + b">"
        try:
            records = pymarc.parse_xml_to_array(io.BytesIO(doc), strict=False)
            out.append(view_pymarc(records[0]) if len(records) == 1 else None)
        except Exception:
            out.append(None)
    return out


def read_output(path: Path, fmt: str) -> list[View]:
    """An engine output read back by pymarc (strictly: MARC 21 through its lengths and directory)."""
    import pymarc

    data = path.read_bytes()
    if fmt == "marcxml":
        try:
            return [view_pymarc(r) for r in pymarc.parse_xml_to_array(io.BytesIO(data), strict=True)]
        except Unrepresentable:  # 00X data fields: the standard library's XML reader
            return view_etree(data)
    if fmt == "json":  # the standard library's reader (pymarc's adds nothing but time, and loses 00X data fields)
        views = [view_json(json.loads(line)) for line in data.splitlines() if line]
        if any(len(leader) != 24 for leader, _ in views):
            raise ValueError("a leader that is not 24 characters (pymarc's Leader refuses it)")
        return views
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bad code byte must not be "normalised" quietly
        for record in pymarc.MARCReader(io.BytesIO(data), to_unicode=True, utf8_handling="strict"):
            if record is None:
                raise ValueError("pymarc cannot read a record of the MARC 21 output")
            out.append(view_pymarc(record))
    return out


# --- the engine ---------------------------------------------------------------------------------------------
def run_engine(path: Path, fmt: str, out: Path) -> Any:
    from pipeline.destinations.local import LocalDestination
    from pipeline.marc.engine import Input, process_file

    out.mkdir(parents=True, exist_ok=True)
    return process_file(Input.from_path(path), LocalDestination(out), fmt=fmt, workers=1)


def engine_outputs(result: Any) -> tuple[list[Path], list[dict], Path | None]:
    records = [Path(o.path) for o in result.outputs if o.extra.get("kind", "records") == "records"]
    rejects: list[dict] = []
    raw_path = None
    for o in result.outputs:
        if o.extra.get("kind") == "rejects-log":
            rejects.extend(json.loads(line) for line in Path(o.path).read_text("utf-8").splitlines())
        elif o.extra.get("kind") == "rejects":
            raw_path = Path(o.path)
    return records, rejects, raw_path


def _record_end(kind: str, data: bytes, offset: int) -> int:
    if kind == "marc21":
        end = data.find(b"\x1d", offset)
        return len(data) if end < 0 else end + 1
    if kind == "json":
        end = data.find(b"\n", offset)
        return len(data) if end < 0 else end
    m = re.compile(rb"</([\w.\-]+:)?record\s*>").search(data, offset)
    return len(data) if m is None else m.end()


# --- one file ---------------------------------------------------------------------------------------------------
def check_file(path: Path, work: Path) -> dict[str, Any]:
    """Everything about one corpus file: counts per format and reason, and the unexplained differences."""
    rel = str(path.relative_to(REALDATA))
    report: dict[str, Any] = {"file": rel, "records": 0, "written": {}, "problems": [], "rejects": {},
                              "unverified": 0, "readers": set(), "salvaged": 0, "file_errors": {}}
    problems = report["problems"]
    seen = []
    for name, data in members(path.name, path.read_bytes()):
        kind = kind_of(data)
        views, reader = oracle(data, kind)
        seen.append((name, data, kind, views))
        if reader.startswith("json document of "):
            report["json_document_records"] = int(reader.rsplit(" ", 1)[1])
            report["records"] += report["json_document_records"]
            reader = "pymarc"
        else:  # records an independent reader could read; the rest are counted as unreadable pieces
            report["records"] += sum(v is not None for v in views or ())
            report["unreadable"] = report.get("unreadable", 0) + sum(v is None for v in views or ())
        report["readers"].add(reader)
    first_xml: list[View] | None = None
    for fmt in FORMATS:
        result = run_engine(path, fmt, work / fmt)
        outputs, rejects, raw_path = engine_outputs(result)
        raw_rejects = raw_path.read_bytes() if raw_path else b""
        report["written"][fmt] = result.records_out
        for r in rejects:
            if not r.get("reason"):
                problems.append(f"{fmt}: record {r['index']} rejected without a reason code: {r['error']}")
            counts = report["rejects"].setdefault(fmt, {})
            counts[r.get("reason")] = counts.get(r.get("reason"), 0) + 1
        if fmt == "marc21":
            report["salvaged"] = result.counters.get("salvaged_directory_fallback", 0)
        if result.records_in != result.records_out + result.rejected + result.dropped:
            problems.append(f"{fmt}: records in {result.records_in} != out + rejected + dropped")
        if result.error:
            report["file_errors"][fmt] = result.error
            if any(text in result.error for text in EXPLAINED_FILE_ERRORS):
                continue
            readable = sum(1 for *_, views in seen for v in views or () if v is not None)
            if readable > result.records_out + result.rejected:
                problems.append(f"{fmt}: the engine fails the file ({result.error}) after {result.records_in} "
                                f"records; independent readers read {readable}")
            continue
        if len(outputs) != len(seen):
            problems.append(f"{fmt}: {len(seen)} members in the file, {len(outputs)} outputs")
            continue
        first = 0
        all_out: list[View] = []
        for (name, data, kind, views), out_path in zip(seen, outputs, strict=True):
            try:
                got = read_output(out_path, fmt)
            except Exception as exc:
                problems.append(f"{fmt}: {name}: pymarc cannot read the output: {type(exc).__name__}: {exc}")
                continue
            all_out.extend(got)
            mine = [r for r in rejects if r["input"] == name]
            count = len(got) + len(mine)
            for r in mine:
                if r.get("offset") is not None and r.get("raw") is None:
                    end = _record_end(kind, data, r["offset"])
                    if data[r["offset"]:end].strip(_SPACE) not in raw_rejects:
                        problems.append(f"{fmt}: {name}: record {r['index']} rejected, original bytes not kept")
            # an element that is not a record element is rejected by the engine, skipped by pymarc
            rejected = {r["index"] - first for r in mine}
            not_records = {r["index"] - first for r in mine if r.get("reason") == "xml-not-a-record"}
            first += count
            if views is None:
                report["unverified"] += len(got)
                continue
            if count - len(not_records) != len(views):
                problems.append(f"{fmt}: {name}: the engine read {count - len(not_records)} records, "
                                f"{report['readers']} {len(views)}")
                continue
            it = iter(got)
            oracle_index = 0
            for i in range(count):
                if i in not_records:
                    continue
                want = views[oracle_index]
                oracle_index += 1
                if i in rejected:
                    continue
                out_view = next(it)
                if want is None:
                    report["unverified"] += 1
                    continue
                if expected_for(want, fmt) != expected_for(out_view, fmt):
                    problems.append(f"{fmt}: {name}: record {i} differs: "
                                    f"{_diff(expected_for(want, fmt), expected_for(out_view, fmt))}")
        if fmt == "marcxml":
            first_xml = all_out
    # the round trip: MARCXML -> MARC 21 -> MARCXML, compared line by line (one record per line, the
    # writer is deterministic), the leader positions MARC 21 recomputes masked
    if first_xml is not None:
        for xml_path in sorted((work / "marcxml").glob("*.xml")):
            if ".rejects." in xml_path.name:
                continue
            step1 = run_engine(xml_path, "marc21", work / "rt1" / xml_path.stem)
            outs1, rej1, _ = engine_outputs(step1)
            for r in rej1:
                counts = report["rejects"].setdefault("roundtrip", {})
                counts[r.get("reason")] = counts.get(r.get("reason"), 0) + 1
                if not r.get("reason"):
                    problems.append(f"roundtrip: record {r['index']} rejected without a reason code")
            if step1.error or not outs1:
                problems.append(f"roundtrip: the engine cannot read its own MARCXML: {step1.error}")
                continue
            step2 = run_engine(outs1[0], "marcxml", work / "rt2" / xml_path.stem)
            outs2, rej2, _ = engine_outputs(step2)
            report["written"]["roundtrip"] = report["written"].get("roundtrip", 0) + step2.records_out
            if rej2 or step2.error:
                problems.append(f"roundtrip: the engine rejects its own MARC 21: "
                                f"{rej2[0]['error'] if rej2 else step2.error}")
                continue
            dropped = {r["index"] for r in rej1}
            before = [line for i, line in enumerate(_record_lines(xml_path)) if i not in dropped]
            after = _record_lines(outs2[0])
            if len(before) != len(after):
                problems.append(f"roundtrip: {len(before)} records written, {len(after)} back")
                continue
            for i, (x, y) in enumerate(zip(before, after, strict=True)):
                if x != y:
                    problems.append(f"roundtrip: record {i} differs: {x[:300]!r} != {y[:300]!r}")
                    break
    report["readers"] = sorted(report["readers"])
    return report


_LEADER = re.compile(rb"<leader>([^<]*)</leader>")


def _mask(m: re.Match[bytes]) -> bytes:
    text = m.group(1).replace(b"&lt;", b"<").replace(b"&gt;", b">").replace(b"&amp;", b"&")
    return b"<leader>" + text[5:9] + text[17:20] + b"</leader>"


def _record_lines(path: Path) -> list[bytes]:
    """The record lines of a MARCXML output, leader/00-04, 09-16 and 20-23 masked (MARC 21 recomputes
    them; they describe the binary record)."""
    return [_LEADER.sub(_mask, line) for line in path.read_bytes().splitlines()
            if line.startswith(b"<record>")]


def _diff(want: View, got: View) -> str:
    if want[0] != got[0]:
        return f"leader {want[0]!r} != {got[0]!r}"
    for i, (a, b) in enumerate(zip(want[1], got[1], strict=False)):
        if a != b:
            return f"field {i}: expected {str(a)[:160]} got {str(b)[:160]}"
    return f"{len(want[1])} fields expected, {len(got[1])} written"


def check_path(rel: str) -> dict[str, Any]:
    """Pool entry point: check one file in a scratch folder of its own."""
    sys.stderr = open(os.devnull, "w")  # pymarc prints MARC-8 warnings
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="conformance-", dir=scratch) as tmp:  # memory: outputs are fsynced
        try:
            started = time.monotonic()
            report = check_file(REALDATA / rel, Path(tmp))
            report["seconds"] = time.monotonic() - started
            return report
        except Exception as exc:  # a crash in the checker or engine is a problem of this file, reported
            import traceback
            return {"file": rel, "records": 0, "written": {}, "problems": [f"crash: {type(exc).__name__}: {exc}\n"
                                                                          f"{traceback.format_exc()[-1500:]}"],
                    "rejects": {}, "unverified": 0, "readers": [], "salvaged": 0, "file_errors": {}}


def corpus_files() -> list[str]:
    """Every corpus file, largest first (so a pool is not left waiting on one big file at the end)."""
    files = [p for p in REALDATA.rglob("*") if p.is_file() and p.name != "SOURCES.md"]
    return [str(p.relative_to(REALDATA)) for p in sorted(files, key=lambda p: (-p.stat().st_size, str(p)))]


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text)
