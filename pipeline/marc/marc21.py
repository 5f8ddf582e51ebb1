"""Binary MARC 21 (ISO 2709): reading one framed record, and the writer.

Reading: records are framed on the 0x1D terminator (see framing.py), never on the 5-digit length
in the leader, so one wrong length costs only its own record (pymarc's MARCReader stops reading the
file there). Field data is cut on the 0x1E field terminators and matched with the directory's tags;
the directory's lengths and offsets are not trusted. Leader/09 `a` means UTF-8 (strict); otherwise
UTF-8 is tried strictly, then MARC-8. The record's text is Unicode from then on, so leader/09 is set
to `a`. Undecodable bytes reject the record with the field named.

Writing: UTF-8 only, with the ISO 2709 limits enforced (field <= 9,999 bytes, record <= 99,999
bytes): a record over a limit raises `RecordError` and is rejected, never written corrupt.
"""

from __future__ import annotations

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


def parse_marc21(raw: bytes) -> Record:
    """Parse one record's bytes (ending in 0x1D); raise `RecordError` saying what is wrong."""
    if not raw.endswith(RT):
        raise RecordError(f"record has no terminator (0x1D); {len(raw)} bytes at the end of the input (truncated?)")
    if len(raw) < 26:
        raise RecordError(f"record is only {len(raw)} bytes; a leader alone is 24")
    try:
        leader = raw[:24].decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("leader is not ASCII") from None
    dir_end = raw.find(b"\x1e", 24)
    if dir_end < 0:
        raise RecordError("no end of directory (0x1E)")
    directory = raw[24:dir_end]
    if len(directory) % 12:
        raise RecordError(f"directory is {len(directory)} bytes, not a multiple of 12")
    count = len(directory) // 12
    try:
        dtext = directory.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("directory is not ASCII") from None
    tags = [dtext[i:i + 3] for i in range(0, len(dtext), 12)]
    data = raw[dir_end + 1:-1]
    if leader[9] == "a":
        try:
            pieces = data.decode("utf-8").split(FT)
        except UnicodeDecodeError as exc:
            raise RecordError(f"invalid UTF-8 in {_field_at(tags, data, exc.start)} "
                              f"(leader/09 says UTF-8): {exc.reason}") from None
    else:
        try:
            pieces = data.decode("utf-8").split(FT)
        except UnicodeDecodeError:
            pieces = _decode_marc8_fields(tags, data)
        leader = leader[:9] + "a" + leader[10:]
    if pieces[-1].strip(" \r\n"):
        raise RecordError(f"{len(pieces[-1])} bytes after the last field terminator")
    if len(pieces) - 1 != count:
        raise RecordError(f"directory lists {count} fields but the data holds {len(pieces) - 1}")
    fields = []
    for tag, piece in zip(tags, pieces, strict=False):
        if tag[0] == "0" and tag[1] == "0":
            fields.append(Field(tag, " ", " ", None, piece))
            continue
        if len(piece) < 2:
            raise RecordError(f"field {tag} has no indicators")
        rest = piece[2:]
        if not rest:
            fields.append(Field(tag, piece[0], piece[1], []))
            continue
        if rest[0] != SF:
            raise RecordError(f"field {tag} has data before its first subfield: {rest[:20]!r}")
        parts = rest[1:].split(SF)
        try:  # map/zip run in C: several times faster than a comprehension over the subfields
            subs = list(zip(map(_FIRST, parts), map(_REST, parts), strict=True))
        except IndexError:
            raise RecordError(f"field {tag} has an empty subfield (two delimiters in a row)") from None
        fields.append(Field(tag, piece[0], piece[1], subs))
    return Record(leader, fields)


def _field_at(tags: list[str], data: bytes, pos: int) -> str:
    index = data.count(b"\x1e", 0, pos)
    return f"field {tags[index]}" if index < len(tags) else f"byte {pos} of the data"


def _decode_marc8_fields(tags: list[str], data: bytes) -> list[str]:
    out = []
    for index, chunk in enumerate(data.split(b"\x1e")):
        try:
            out.append(decode_marc8(chunk))
        except Marc8Error as exc:
            name = f"field {tags[index]}" if index < len(tags) else "the data"
            raise RecordError(f"neither UTF-8 nor MARC-8 in {name}: {exc}") from None
    return out


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
    if size % 12 or not ascii and not (raw[:24].isascii() and directory.isascii()):
        return None
    data = raw[dir_end + 1:-1]
    if not ascii:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
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
    # the directory the writer would write, formatted in one call (a format per entry costs 3x more)
    layout = _DIRECTORY_FORMATS.get(count)
    if layout is None:
        layout = "%s%04d%05d" * count
        if count <= 256:
            _DIRECTORY_FORMATS[count] = layout
    if layout % tuple(chain.from_iterable(zip(tags, lengths, accumulate(lengths, initial=0), strict=False))) != dtext:
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
        if len(leader) != 24 or not leader.isascii():
            raise RecordError(f"leader must be 24 ASCII characters, got {len(leader)}: {leader!r}")
        fields = record.fields
        texts = []
        delimiters = 0
        for f in fields:
            subfields = f.subfields
            if subfields is None:
                texts.append((f.value or "") + FT)
            elif subfields:
                delimiters += len(subfields)
                texts.append(f.ind1 + f.ind2 + SF + SF.join(map("".join, subfields)) + FT)
            else:
                texts.append(f.ind1 + f.ind2 + FT)
        whole = "".join(texts)
        # Checks on the whole record at once (C speed); the per-field walk below only names the culprit.
        codes = [c for f in fields if f.subfields for c, _ in f.subfields]
        inds = [i for f in fields if f.subfields is not None for i in (f.ind1, f.ind2)]
        if (whole.count(SF) != delimiters or whole.count(FT) != len(texts) or "\x1d" in whole
                or (codes and (len("".join(codes)) != len(codes) or max(map(len, codes)) != 1))
                or (inds and (len("".join(inds)) != len(inds) or max(map(len, inds)) != 1))):
            _explain(record)
        if whole.isascii():
            lengths = list(map(len, texts))
            data = whole.encode("ascii")
        else:
            try:
                encoded = [t.encode("utf-8") for t in texts]
            except UnicodeEncodeError as exc:
                raise RecordError(f"cannot encode as UTF-8: {exc.reason}") from None
            lengths = list(map(len, encoded))
            data = b"".join(encoded)
        if lengths and max(lengths) > MAX_FIELD:
            tag, n = next((f.tag, n) for f, n in zip(fields, lengths, strict=True) if n > MAX_FIELD)
            raise RecordError(f"field {tag} is {n:,} bytes; MARC 21 allows at most 9,999 per field")
        tags = [f.tag for f in fields]
        base = 24 + 12 * len(tags) + 1
        total = base + len(data) + 1
        if total > MAX_RECORD:
            raise RecordError(f"record is {total:,} bytes; MARC 21 allows at most 99,999")
        dirtext = "".join(map(_ENTRY, tags, lengths, accumulate(lengths, initial=0)))
        if len(dirtext) != 12 * len(tags) or not dirtext.isascii():
            bad = next(t for t in tags if len(t) != 3 or not t.isascii())
            raise RecordError(f"tag {bad!r} is not 3 ASCII characters")
        head = f"{total:05d}{leader[5:9]}a22{base:05d}{leader[17:20]}4500"
        return (head + dirtext).encode("ascii") + b"\x1e" + data + RT


_ENTRY = "{}{:04d}{:05d}".format


def _explain(record: Record) -> None:
    """Raise the RecordError that names what makes `record` unwritable as MARC 21."""
    for f in record.fields:
        if f.subfields is None:
            if any(d in (f.value or "") for d in "\x1d\x1e\x1f"):
                raise RecordError(f"field {f.tag} contains a MARC delimiter character (0x1D/0x1E/0x1F)")
            continue
        if len(f.ind1) != 1 or len(f.ind2) != 1:
            raise RecordError(f"field {f.tag}: indicators must be one character each, got {f.ind1!r} {f.ind2!r}")
        for code, value in f.subfields:
            if len(code) != 1:
                raise RecordError(f"field {f.tag}: subfield code {code!r} is not one character")
            if any(d in code + value for d in "\x1d\x1e\x1f") or any(d in f.ind1 + f.ind2 for d in "\x1d\x1e\x1f"):
                raise RecordError(f"field {f.tag} contains a MARC delimiter character (0x1D/0x1E/0x1F)")
    raise RecordError("record contains a MARC delimiter character (0x1D/0x1E/0x1F) in its data")
