"""Binary MARC 21 (ISO 2709): reading one framed record, and the writer.

Reading: records are framed on the 0x1D terminator (see framing.py), never on the 5-digit length
in the leader, so one wrong length costs only its own record (pymarc's MARCReader stops reading the
file there). Fields are read through the directory (offset and length, in any order, as ISO 2709
allows) whenever it is consistent; otherwise the data is cut on the 0x1E terminators and matched
with the directory's tags in order, a salvage counted in `salvaged_directory_fallback` (Boston
University's Alma export counts lengths in characters, not bytes). Character coding: ESC (0x1B)
anywhere means MARC-8, whatever leader/09 says; else leader/09 `a` means UTF-8 (strict); else UTF-8
is tried strictly, then MARC-8. MARC-8 is decoded per control field and per subfield value;
indicators and subfield codes are single bytes, never read through an escape. The record's text is
Unicode from then on, so leader/09 is set to `a`. Undecodable bytes reject the record with the
field named. A 00X field with indicators and a delimiter is a data field (as yaz reads it).

Writing: UTF-8 only, with the ISO 2709 limits enforced (field <= 9,999 bytes, record <= 99,999
bytes), a 24-character ASCII leader, indicators and subfield codes of one ASCII byte each, control
fields only under 00X tags: anything else raises `RecordError` with a reason code and is rejected,
never written corrupt, so what this writer emits the reader above returns unchanged.
"""

from __future__ import annotations

import re
from itertools import accumulate, chain
from operator import itemgetter

from pipeline.marc.marc8 import Marc8Error, decode_marc8
from pipeline.marc.record import Field, Record, RecordError

FT = "\x1e"
SF = "\x1f"
RT = b"\x1d"
MAX_FIELD = 9999
MAX_RECORD = 99999
_FIRST = itemgetter(0)
_REST = itemgetter(slice(1, None))


def parse_marc21(raw: bytes, counters: dict[str, int] | None = None) -> Record:
    """Parse one record's bytes (ending in 0x1D); raise `RecordError` saying what is wrong.

    `counters["salvaged_directory_fallback"]` counts records whose directory was not consistent and
    whose fields were found by splitting on the field terminators instead."""
    if not raw.endswith(RT):
        raise RecordError(f"record has no terminator (0x1D); {len(raw)} bytes at the end of the input (truncated?)",
                          "marc21-truncated")
    if len(raw) < 26:
        raise RecordError(f"record is only {len(raw)} bytes; a leader alone is 24", "marc21-truncated")
    try:
        leader = raw[:24].decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("leader is not ASCII", "leader-not-ascii") from None
    dir_end = raw.find(b"\x1e", 24)
    if dir_end < 0:
        raise RecordError("no end of directory (0x1E)", "marc21-directory-end")
    directory = raw[24:dir_end]
    if len(directory) % 12:
        raise RecordError(f"directory is {len(directory)} bytes, not a multiple of 12", "marc21-directory-length")
    try:
        dtext = directory.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("directory is not ASCII", "marc21-directory-not-ascii") from None
    tags = [dtext[i:i + 3] for i in range(0, len(dtext), 12)]
    data = raw[dir_end + 1:-1]
    chunks, in_order = _by_directory(dtext, tags, data)
    if chunks is None:
        in_order = True
        chunks = data.split(b"\x1e")
        if chunks[-1].strip(b" \r\n"):
            raise RecordError(f"{len(chunks[-1])} bytes after the last field terminator", "marc21-trailing-data")
        if len(chunks) - 1 != len(tags):
            raise RecordError(f"directory lists {len(tags)} fields but the data holds {len(chunks) - 1}, and its "
                              "offsets and lengths do not point at the fields either", "marc21-directory-mismatch")
        chunks.pop()
        if counters is not None:
            counters["salvaged_directory_fallback"] = counters.get("salvaged_directory_fallback", 0) + 1
    if b"\x1b" in data:  # MARC-8 escapes: whatever leader/09 says, ESC is no UTF-8 text
        fields = _marc8_fields(tags, chunks, "it holds MARC-8 escape sequences")
    elif leader[9] == "a":
        fields = _utf8_fields(tags, chunks, data, in_order)
    else:
        try:
            fields = _utf8_fields(tags, chunks, data, in_order)
        except _NotUtf8:
            fields = _marc8_fields(tags, chunks, "neither UTF-8 nor MARC-8")
    return Record(leader[:9] + "a" + leader[10:], fields)


class _NotUtf8(RecordError):
    pass


def _by_directory(dtext: str, tags: list[str], data: bytes) -> tuple[list[bytes] | None, bool]:
    """Each field's bytes (without its terminator) as the directory places them, and whether they are
    the data's own order; (None, False) when the directory is not consistent: an entry that is not
    digits, lies outside the data, or does not end on a field terminator. ISO 2709 lets fields appear
    in any order; the directory is the truth."""
    count = len(tags)
    pieces = data.split(b"\x1e")
    if len(pieces) == count + 1 and not pieces[-1]:  # the usual layout, checked in one formatted compare
        pieces.pop()
        lengths = [len(p) + 1 for p in pieces]
        if _directory_is(tags, lengths, dtext):
            return pieces, True
    out = []
    size = len(data)
    for i in range(0, len(dtext), 12):
        length, offset = dtext[i + 3:i + 7], dtext[i + 7:i + 12]
        if not (length.isdigit() and offset.isdigit()):
            return None, False
        start = int(offset)
        end = start + int(length) - 1  # the terminator's position
        if end < start or end >= size or data[end] != 0x1E:
            return None, False
        out.append(data[start:end])
    return out, b"\x1e".join(out) + b"\x1e" == data


def _is_control(tag: str, chunk: bytes) -> bool:
    """00X fields are control fields, unless they carry indicators and a delimiter (DanMARC and others
    use 00X data fields; yaz reads them so too)."""
    return tag[0] == "0" and tag[1] == "0" and chunk[2:3] != b"\x1f"


def _utf8_fields(tags: list[str], chunks: list[bytes], data: bytes, in_order: bool) -> list[Field]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(f"invalid UTF-8 in {_field_at(tags, data, exc.start)}: {exc.reason}", "utf8-invalid") from None
    # fields in data order (the usual case): one decode for the record
    pieces = text.split(FT) if in_order else [c.decode("utf-8") for c in chunks]
    fields = []
    append = fields.append
    for tag, piece in zip(tags, pieces, strict=False):
        if tag[0] == "0" and tag[1] == "0" and piece[2:3] != SF:  # a control field (see _is_control)
            append(Field(tag, " ", " ", None, piece))
        elif piece[2:3] == SF and SF not in piece[:2]:  # the usual data field, parsed inline
            parts = piece[3:].split(SF)
            try:  # map/zip run in C: several times faster than a comprehension over the subfields
                subs = list(zip(map(_FIRST, parts), map(_REST, parts), strict=True))
            except IndexError:
                raise RecordError(f"field {tag} has an empty subfield (two delimiters in a row)",
                                  "marc21-empty-subfield") from None
            append(Field(tag, piece[0], piece[1], subs))
        else:
            append(_data_field(tag, piece))
    return fields


def _data_field(tag: str, piece: str) -> Field:
    """A data field not of the usual shape (two indicators, a delimiter): one with indicators only,
    or the RecordError naming what is wrong."""
    if len(piece) < 2 or SF in piece[:2]:
        raise RecordError(f"field {tag} has no indicators", "marc21-indicators-missing")
    if len(piece) == 2:
        return Field(tag, piece[0], piece[1], [])
    raise RecordError(f"field {tag} has data before its first subfield: {piece[2:22]!r}",
                      "marc21-data-before-subfield")


def _marc8_fields(tags: list[str], chunks: list[bytes], why: str) -> list[Field]:
    """MARC-8 text, decoded per control field and per subfield value (every subfield starts in the
    default character sets, as pymarc and yaz read it); indicators and subfield codes are structure,
    read as single bytes in the default sets, never through an escape that came before them."""
    fields = []
    for tag, chunk in zip(tags, chunks, strict=False):
        try:
            if _is_control(tag, chunk):
                fields.append(Field(tag, " ", " ", None, decode_marc8(chunk)))
                continue
            head, _, rest = chunk.partition(b"\x1f")
            if len(head) != 2:
                fields.append(_data_field(tag, decode_marc8(chunk)))  # explains what is wrong
                continue
            ind1, ind2 = decode_marc8(head[:1]), decode_marc8(head[1:])
            subs = []
            if _:
                for part in rest.split(b"\x1f"):
                    if not part:
                        raise RecordError(f"field {tag} has an empty subfield (two delimiters in a row)",
                                          "marc21-empty-subfield")
                    subs.append((decode_marc8(part[:1]), decode_marc8(part[1:])))
            fields.append(Field(tag, ind1, ind2, subs))
        except Marc8Error as exc:
            raise RecordError(f"field {tag} cannot be read as MARC-8 ({why}): {exc}", "marc8-undecodable") from None
    return fields


def _field_at(tags: list[str], data: bytes, pos: int) -> str:
    index = data.count(b"\x1e", 0, pos)
    return f"field {tags[index]}" if index < len(tags) else f"byte {pos} of the data"


def salvage_id(raw: bytes | None) -> str | None:
    """The 001 of a record that could not be parsed, when its directory still points at it."""
    if not raw:
        return None
    try:
        dir_end = raw.index(b"\x1e", 24)
        directory = raw[24:dir_end]
        for i in range(0, len(directory) - 11, 12):
            if directory[i:i + 3] == b"001":
                length, start = int(directory[i + 3:i + 7]), int(directory[i + 7:i + 12])
                value = raw[dir_end + 1 + start: dir_end + 1 + start + length].split(b"\x1e")[0]
                return value.decode("utf-8", "replace").strip() or None
    except (ValueError, IndexError):
        return None
    return None


_DIRECTORY_FORMATS: dict[int, str] = {}


def _directory_is(tags: list[str], lengths: list[int], dtext: str) -> bool:
    """Whether `dtext` is the directory a writer makes for these fields in data order: one formatted
    compare instead of parsing every entry (a format per entry costs several times more)."""
    count = len(lengths)
    layout = _DIRECTORY_FORMATS.get(count)
    if layout is None:
        layout = "%s%04d%05d" * count
        if count <= 256:
            _DIRECTORY_FORMATS[count] = layout
    offsets = accumulate(lengths, initial=0)
    return layout % tuple(chain.from_iterable(zip(tags, lengths, offsets, strict=False))) == dtext

_CODE_NOT_ASCII = re.compile(rb"\x1f[\x80-\xff]")


def passthrough_marc21(raw: bytes) -> bytes | None:
    """The bytes `Marc21Encoder().encode(parse_marc21(raw))` would produce, found without building a
    Record, or None when this cannot tell (the caller then takes the full path).

    Why: MARC 21 -> MARC 21 with no rules is the common "clean and re-frame" run, and most input
    records are already what the writer would write: UTF-8, a directory that matches the data, no
    delimiter in the wrong place. For such a record the writer's output is the input with leader/00-04,
    09-11, 12-16 and 20-23 recomputed, so checking that (byte searches and one UTF-8 decode, all in C)
    is several times cheaper than parsing into fields and encoding them again. The checks are
    deliberately conservative: anything unusual (MARC-8, wrong lengths or offsets, padding after the
    last field, empty subfields, non-ASCII indicators, limits exceeded) returns None, so rejects and
    their reasons always come from the full path.
    """
    n = len(raw)
    if n < 26 or n > MAX_RECORD or not raw.endswith(b"\x1e\x1d") or raw.count(b"\x1d") != 1:
        return None
    dir_end = raw.find(b"\x1e", 24)
    directory = raw[24:dir_end]
    size = len(directory)
    ascii = raw.isascii()
    if not size or size % 12 or not ascii and not (raw[:24].isascii() and directory.isascii()):
        return None
    data = raw[dir_end + 1:-1]
    if not ascii:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _CODE_NOT_ASCII.search(data):
            return None
    if b"\x1b" in data:  # MARC-8 escapes: the reader decodes MARC-8
        return None
    if b"\x1f\x1f" in data or b"\x1f\x1e" in data:  # empty subfields (or a delimiter as indicator)
        return None
    pieces = data.split(b"\x1e")
    pieces.pop()  # data ends with 0x1E: nothing after the last field
    count = size // 12
    if len(pieces) != count:
        return None
    dtext = directory.decode("ascii")
    tags = list(map("".join, zip(dtext[0::12], dtext[1::12], dtext[2::12], strict=True)))
    for tag, piece in zip(tags, pieces, strict=True):
        if tag[0] == "0" and tag[1] == "0":
            if b"\x1f" in piece:
                return None
        elif len(piece) > 2:
            if piece[2] != 0x1F or piece[0] >= 0x80 or piece[1] >= 0x80 or piece[0] == 0x1F or piece[1] == 0x1F:
                return None
        elif len(piece) != 2 or piece[0] >= 0x80 or piece[1] >= 0x80 or 0x1F in piece:
            return None
    lengths = [len(p) + 1 for p in pieces]
    if lengths and max(lengths) > MAX_FIELD:
        return None
    if not _directory_is(tags, lengths, dtext):
        return None
    leader = raw[:24]
    head = b"%05d%sa22%05d%s4500" % (n, leader[5:9], dir_end + 1, leader[17:20])
    return raw if head == leader else head + raw[24:]


class Marc21Encoder:
    """MARC 21 binary, UTF-8 (leader/09 `a`), ISO 2709 limits enforced."""

    extension = "mrc"

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def header(self) -> bytes:
        return b""

    def footer(self) -> bytes:
        return b""

    def encode(self, record: Record) -> bytes:
        leader = record.leader
        if len(leader) != 24:
            raise RecordError(f"leader must be 24 characters, got {len(leader)}: {leader!r}", "leader-length")
        if not leader.isascii():
            raise RecordError(f"leader must be ASCII in MARC 21: {leader!r}", "leader-not-ascii")
        fields = record.fields
        if not fields:
            raise RecordError("record has no fields; MARC 21 readers refuse a record without a directory entry",
                              "marc21-no-fields")
        texts = []
        delimiters = 0
        odd = False  # a control field with a tag readers take for a data field, or the reverse
        for f in fields:
            subfields = f.subfields
            if subfields is None:
                texts.append((f.value or "") + FT)
                odd = odd or f.tag[:2] != "00"
            elif subfields:
                delimiters += len(subfields)
                texts.append(f.ind1 + f.ind2 + SF + SF.join(map("".join, subfields)) + FT)
            else:
                texts.append(f.ind1 + f.ind2 + FT)
                odd = odd or f.tag[:2] == "00"
        whole = "".join(texts)
        # Checks on the whole record at once (C speed); the per-field walk below only names the culprit.
        codes = [c for f in fields if f.subfields for c, _ in f.subfields]
        inds = [i for f in fields if f.subfields is not None for i in (f.ind1, f.ind2)]
        code_text, ind_text = "".join(codes), "".join(inds)
        if (odd or whole.count(SF) != delimiters or whole.count(FT) != len(texts) or "\x1d" in whole
                or (codes and (len(code_text) != len(codes) or max(map(len, codes)) != 1 or not code_text.isascii()))
                or (inds and (len(ind_text) != len(inds) or max(map(len, inds)) != 1 or not ind_text.isascii()))):
            _explain(record)
        if whole.isascii():
            lengths = list(map(len, texts))
            data = whole.encode("ascii")
        else:
            try:
                encoded = [t.encode("utf-8") for t in texts]
            except UnicodeEncodeError as exc:
                raise RecordError(f"cannot encode as UTF-8: {exc.reason}", "unicode-unencodable") from None
            lengths = list(map(len, encoded))
            data = b"".join(encoded)
        if lengths and max(lengths) > MAX_FIELD:
            tag, n = next((f.tag, n) for f, n in zip(fields, lengths, strict=True) if n > MAX_FIELD)
            raise RecordError(f"field {tag} is {n:,} bytes; MARC 21 allows at most 9,999 per field",
                              "marc21-field-too-long")
        tags = [f.tag for f in fields]
        base = 24 + 12 * len(tags) + 1
        total = base + len(data) + 1
        if total > MAX_RECORD:
            raise RecordError(f"record is {total:,} bytes; MARC 21 allows at most 99,999", "marc21-record-too-long")
        dirtext = "".join(map(_ENTRY, tags, lengths, accumulate(lengths, initial=0)))
        if len(dirtext) != 12 * len(tags) or not dirtext.isascii():
            bad = next(t for t in tags if len(t) != 3 or not t.isascii())
            raise RecordError(f"tag {bad!r} is not 3 ASCII characters", "tag-invalid")
        head = f"{total:05d}{leader[5:9]}a22{base:05d}{leader[17:20]}4500"
        return (head + dirtext).encode("ascii") + b"\x1e" + data + RT


_ENTRY = "{}{:04d}{:05d}".format


def _explain(record: Record) -> None:
    """Raise the RecordError that names what makes `record` unwritable as MARC 21."""
    delimiter = "contains a MARC delimiter character (0x1D/0x1E/0x1F)"
    for f in record.fields:
        tag = f.tag
        if f.subfields is None:
            if any(d in (f.value or "") for d in "\x1d\x1e\x1f"):
                raise RecordError(f"field {tag} {delimiter}", "marc21-delimiter-in-data")
            if tag[:2] != "00":
                raise RecordError(f"field {tag} is a control field, but in MARC 21 only 00X tags are: readers "
                                  "would take it for a data field", "marc21-control-field-tag")
            continue
        if tag[:2] == "00" and not f.subfields:
            raise RecordError(f"field {tag} is a data field without subfields: in MARC 21 it would read back as "
                              "a control field", "marc21-00x-data-field-empty")
        for ind in (f.ind1, f.ind2):
            if len(ind) != 1 or not ind.isascii():
                raise RecordError(f"field {tag}: indicator {ind!r} is not one ASCII character; MARC 21 "
                                  f"indicators are one byte each (indicators {f.ind1!r} {f.ind2!r})",
                                  "marc21-indicator-invalid")
        for code, value in f.subfields:
            if not code:
                raise RecordError(f"field {tag}: a subfield has no code", "subfield-code-missing")
            if len(code) != 1:
                raise RecordError(f"field {tag}: subfield code {code!r} is {len(code)} characters; MARC 21 "
                                  "allows one ASCII byte", "marc21-subfield-code-length")
            if not code.isascii():
                raise RecordError(f"field {tag}: subfield code {code!r} is not ASCII; MARC 21 allows one "
                                  "ASCII byte", "marc21-subfield-code-not-ascii")
            if any(d in code + value for d in "\x1d\x1e\x1f") or any(d in f.ind1 + f.ind2 for d in "\x1d\x1e\x1f"):
                raise RecordError(f"field {tag} {delimiter}", "marc21-delimiter-in-data")
    raise RecordError(f"record {delimiter} in its data", "marc21-delimiter-in-data")
