"""MARCXML: framing a stream into `record` elements, parsing them safely, and the writer.

Framing (main process): a byte-level scanner finds each `record` element of the `collection` (with
any namespace prefix, or none, as Alma writes it), skipping comments and CDATA, so nothing but one
record is ever held in memory and workers can parse records in parallel. The DOCTYPE, if any, is
skipped and never loaded: entities are not resolved, nothing is fetched, so an XXE or
billion-laughs file expands nothing (an entity reference in a record rejects that record).

Parsing (workers): lxml on a batch of records wrapped in an element that re-declares the root's
namespaces (`XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)`);
when a batch is not well-formed, each record is parsed alone so a broken record costs only itself.

Writing: a namespaced `collection`, one `record` per line. Characters XML 1.0 forbids (C0 controls
other than tab/LF/CR, lone surrogates, U+FFFE/U+FFFF) are removed and counted in
`counters["control_chars_removed"]`. A data field parsed by the pattern path whose subfields
text is already the writer's, and which is unchanged when written, is written from that text
(`encode_reusing`; same bytes, without formatting and escaping every subfield again).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from itertools import chain, starmap
from operator import itemgetter
from typing import Any, BinaryIO

from lxml import etree

from pipeline.marc.framing import BLOCK, MAX_RECORD_BYTES, NOT_A_RECORD, TOO_LARGE, Chunk, Frame, InputError
from pipeline.marc.record import Field, Record, RecordError

NS = "http://www.loc.gov/MARC21/slim"

_NAME = rb"[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?"
_ATTRS = rb"(?:\s+[\w.:\-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*"
_START = re.compile(rb"<(" + _NAME + rb")(" + _ATTRS + rb")\s*(/?)>")
_XMLNS = re.compile(rb"""\s(xmlns(?::[\w.\-]+)?)\s*=\s*("[^"]*"|'[^']*')""")
_DECL = re.compile(rb"<\?xml\s[^?]*?encoding\s*=\s*[\"']([A-Za-z0-9._\-]+)[\"']")
# What may sit between records: whitespace, comments, processing instructions
_MISC = re.compile(rb"\s+|<!--.*?-->|<\?.*?\?>", re.S)
_DOCTYPE = re.compile(rb"<!DOCTYPE\s[^\[>]*(?:\[.*?\]\s*)?>", re.S)

CHUNK_BYTES = 512 << 10  # the most a chunk of records for a worker holds (a larger record is framed alone)
_PARSER_OPTIONS = dict(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                       huge_tree=True, remove_blank_text=False, collect_ids=False)


def _markup_after(buf: bytes, mark: bytes, start: int, end: int) -> bool:
    """Whether `<` + `mark` occurs in buf[start:end]. `!` and `?` are rare in records, `<` is in every
    tag: finding the one byte (at memchr speed) and looking back beats a two-byte search several times."""
    i = buf.find(mark, start + 1, end)
    while i >= 0:
        if buf[i - 1] == 0x3C:
            return True
        i = buf.find(mark, i + 1, end)
    return False


def _local(name: bytes) -> bytes:
    return name.rsplit(b":", 1)[-1]


class XmlFramer:
    """Cuts a MARCXML byte stream into `record` elements.

    After `frames()` has started, `encoding` is the document's declared encoding and `wrapper` the
    start tag (with the root's namespace declarations) that makes a batch of records a document.
    """

    def __init__(self, stream: BinaryIO, *, max_record: int = MAX_RECORD_BYTES) -> None:
        self._stream = stream
        self._max = max_record
        self._buf = b""
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self.encoding = "UTF-8"
        self.root_name = b"collection"
        self.namespaces = b""  # the root's xmlns declarations, e.g. b' xmlns="http://..."'

    # -- buffer ---------------------------------------------------------------------------------
    def _fill(self) -> bool:
        if self._eof:
            return False
        block = self._stream.read(BLOCK)
        if not block:
            self._eof = True
            return False
        self._buf = self._buf + block if self._buf else block
        return True

    def _drop(self, upto: int) -> None:
        self._buf = self._buf[upto:]
        self._base += upto

    def _skip_misc(self, pos: int) -> int:
        """Skip whitespace, comments and PIs from `pos`; return the position of the next real content
        (with at least a few bytes of it in the buffer), or the buffer end at end of input."""
        while True:
            m = _MISC.match(self._buf, pos)
            if m and (m.end() < len(self._buf) or self._eof):
                pos = m.end()
                continue
            if not m and (len(self._buf) - pos >= 64 or self._eof):
                if self._eof and self._buf.startswith((b"<!--", b"<?"), pos):
                    raise InputError(f"unterminated comment or processing instruction at byte {self._base + pos}")
                return pos
            # at the end of the buffer (a run of blanks, or a comment / tag cut by it): read on
            if m:
                pos = m.end()
            self._drop(pos)
            pos = 0
            if len(self._buf) > self._max:
                raise InputError(f"a comment or processing instruction at byte {self._base} "
                                 f"runs on for more than {self._max:,} bytes")
            self._fill()

    def _need(self, pos: int, pattern: re.Pattern[bytes], what: str, limit: int = 65536) -> re.Match[bytes]:
        """Match `pattern` at `pos`, reading more input while it might still match further on."""
        while True:
            m = pattern.match(self._buf, pos)
            if m and (m.end() < len(self._buf) or self._eof):
                return m
            if not m and (self._eof or len(self._buf) - pos > limit):
                snippet = self._buf[pos:pos + 60]
                raise InputError(f"malformed XML at byte {self._base + pos}: expected {what}, found {snippet!r}")
            if not self._fill() and m:
                return m

    # -- frames ---------------------------------------------------------------------------------
    def frames(self, chunked: bool = False) -> Iterator[Frame | Chunk]:
        """The records, one frame each; with `chunked`, plain runs of records come as `Chunk`s."""
        self._fill()
        if self._buf.startswith((b"\xff\xfe", b"\xfe\xff")) or self._buf[:4] in (b"<\x00?\x00", b"\x00<\x00?"):
            raise InputError("XML in UTF-16 is not supported; convert the file to UTF-8")
        pos = 3 if self._buf.startswith(b"\xef\xbb\xbf") else 0
        m = _DECL.match(self._buf, pos)
        if m:
            self.encoding = m.group(1).decode("ascii")
        pos = self._skip_misc(pos)
        if self._buf.startswith(b"<!DOCTYPE", pos):  # skipped, never loaded or expanded
            pos = self._need(pos, _DOCTYPE, "a DOCTYPE declaration", self._max).end()
            pos = self._skip_misc(pos)
        if pos >= len(self._buf):
            return  # an empty document: no records
        start = self._need(pos, _START, "the root element (<collection> or <record>)")
        name = start.group(1)
        local = _local(name)
        if local == b"record":
            yield from self._record(pos, start)
            self._expect_end(self._skip_misc(self._end_of_last))
            return
        if local != b"collection":
            raise InputError(f"XML root element is <{name.decode('utf-8', 'replace')}>, not a MARCXML "
                             "<collection> or <record>")
        self.root_name = name
        self.namespaces = b"".join(b" " + a + b"=" + v for a, v in _XMLNS.findall(start.group(2)))
        if start.group(3):  # <collection/>
            self._expect_end(self._skip_misc(start.end()))
            return
        yield from self._children(start.end(), name, chunked)

    def _children(self, pos: int, name: bytes, chunked: bool = False, block: bool = False) -> Iterator[Frame | Chunk]:
        """The elements inside the root `name` from `pos`: a frame each, or with `chunked` a `Chunk` of
        many where that is safe. With `block`, the buffer is a chunk (see `frame_chunk`): its end is
        the end of the records, not a truncated file."""
        end_tag = re.compile(rb"</" + re.escape(name) + rb"\s*>")
        record_start, record_end = b"", b""
        plain_from = 0  # no chunk before this stream offset (a window refused lately)
        while True:
            pos = self._skip_misc(pos)
            if pos >= len(self._buf):
                if block:
                    return
                raise InputError(f"XML ends at byte {self._base + pos} inside <{name.decode()}> "
                                 "(truncated file?)")
            m = end_tag.match(self._buf, pos)
            if m:
                self._expect_end(self._skip_misc(m.end()))
                return
            if self._buf[pos:pos + 1] != b"<" or self._buf.startswith((b"</", b"<!"), pos):
                snippet = self._buf[pos:pos + 60]
                raise InputError(f"malformed XML at byte {self._base + pos}: expected a <record> element, "
                                 f"found {snippet!r}")
            start = self._need(pos, _START, "a start tag")
            if chunked and self._base + pos >= plain_from:
                if start.group(1) != record_start[1:]:
                    record_start, record_end = b"<" + start.group(1), b"</" + start.group(1) + b">"
                end = self._chunk_end(pos, record_start, record_end)
                if end:
                    yield Chunk(self._base + pos, self._buf[pos:end])
                    if end > BLOCK:
                        self._drop(end)
                        end = 0
                    pos = end
                    continue
                plain_from = self._base + pos + CHUNK_BYTES
            yield from self._record(pos, start)
            pos = self._end_of_last

    def _chunk_end(self, pos: int, record_start: bytes, record_end: bytes) -> int:
        """Where a chunk of whole records starting at `pos` can end, or 0. Only plain runs are cut: no
        comment, CDATA, processing instruction or DOCTYPE (`<!`, `<?`) and as many start tags as end
        tags, so every end tag in it ends a record exactly as record-by-record framing would find it."""
        while len(self._buf) - pos < CHUNK_BYTES and self._fill():
            pass
        last = self._buf.rfind(record_end, pos, pos + CHUNK_BYTES)
        if last < 0:
            return 0
        end = last + len(record_end)
        buf = self._buf
        if (_markup_after(buf, b"!", pos, end) or _markup_after(buf, b"?", pos, end)
                or buf.count(record_start, pos, end) != buf.count(record_end, pos, end)):
            return 0
        begin = buf.rfind(record_start, pos, last)  # the end tag must not sit in that start tag's attributes
        start = _START.match(buf, begin) if begin >= 0 else None
        return end if start is not None and start.end() <= last else 0

    def frame_chunk(self, chunk: Chunk) -> Iterator[Frame]:
        """The frames of a chunk this framer cut (in a worker: a framer made with `for_chunks`)."""
        self._buf, self._base, self._eof = chunk.data, chunk.offset, True
        return self._children(0, self.root_name, block=True)  # type: ignore[return-value]

    def chunk_context(self) -> bytes:
        """What a worker's framer needs to frame this input's chunks: the root element's name."""
        return self.root_name

    @classmethod
    def for_chunks(cls, root_name: bytes) -> XmlFramer:
        framer = cls(None)  # type: ignore[arg-type]  # reads nothing: frame_chunk hands it its bytes
        framer.root_name = root_name
        return framer

    def _record(self, pos: int, start: re.Match[bytes]) -> Iterator[Frame]:
        """Frame the element starting at `pos`; sets `_end_of_last` (buffer position after it)."""
        name = start.group(1)
        offset = self._base + pos
        if start.group(3):  # empty element <record/>
            self._end_of_last = start.end()
            error = None if _local(name) == b"record" else f"<{name.decode()}> is not a MARCXML record"
            yield Frame(offset, self._buf[pos:start.end()], error, error and NOT_A_RECORD)
            return
        end_tag = b"</" + name + b">"
        found_at = self._buf.find(end_tag, start.end())
        # `!` first: a one-byte search runs at memchr speed, `<!` (with `<` in every tag) ten times slower
        if found_at >= 0 and (self._buf.find(b"!", start.end(), found_at) < 0
                              or self._buf.find(b"<!", start.end(), found_at) < 0):
            # the usual case, found with plain byte searches: no comment or CDATA inside
            end = found_at + len(end_tag)
            raw = self._buf[pos:end]
            error = None if _local(name) == b"record" else f"<{name.decode()}> is not a MARCXML record"
            if end > BLOCK:
                self._drop(end)
                end = 0
            self._end_of_last = end
            yield Frame(offset, raw, error, error and NOT_A_RECORD)
            return
        closing = re.compile(rb"<!--.*?-->|<!\[CDATA\[.*?\]\]>|</" + re.escape(name) + rb"\s*>", re.S)
        scan = start.end()
        while True:
            found = None
            for m in closing.finditer(self._buf, scan):
                if m.group(0).startswith(b"</"):
                    found = m
                    break
                scan = m.end()
            if found:
                break
            if len(self._buf) - pos > self._max:  # too large: skip it without keeping it
                yield from self._skip_oversized(pos, closing)
                return
            if not self._fill():
                raise InputError(f"XML ends inside the <{name.decode()}> element that starts at byte {offset} "
                                 "(truncated file?)")
        raw = self._buf[pos:found.end()]
        error = None if _local(name) == b"record" else f"<{name.decode()}> is not a MARCXML record"
        end = found.end()
        if end > BLOCK:  # drop what is done now and then, not after every record (that copies the buffer)
            self._drop(end)
            end = 0
        self._end_of_last = end
        yield Frame(offset, raw, error, error and NOT_A_RECORD)

    def _skip_oversized(self, pos: int, closing: re.Pattern[bytes]) -> Iterator[Frame]:
        offset = self._base + pos
        tail = b""
        while True:
            data = tail + self._buf[pos:]
            for m in closing.finditer(data):
                if m.group(0).startswith(b"</"):
                    consumed = m.end() - len(tail)
                    self._drop(pos + consumed)
                    self._end_of_last = 0
                    yield Frame(offset, None, f"record is longer than {self._max:,} bytes; not read (size limit)",
                                TOO_LARGE)
                    return
            tail = data[-4096:]  # a closing tag cut by the block boundary
            self._drop(len(self._buf))
            pos = 0
            if not self._fill():
                raise InputError(f"XML ends inside the oversized record that starts at byte {offset}")

    def _expect_end(self, pos: int) -> None:
        while True:
            if pos < len(self._buf):
                snippet = self._buf[pos:pos + 60]
                raise InputError(f"unexpected content after the root element at byte {self._base + pos}: {snippet!r}")
            self._drop(pos)
            pos = 0
            if not self._fill():
                return
            pos = self._skip_misc(0)

    # -- context for the parser ------------------------------------------------------------------
    def context(self) -> tuple[str, bytes]:
        """What a worker needs to parse this file's records: (encoding, namespace declarations)."""
        return self.encoding, self.namespaces

    def rejects_wrapper(self) -> tuple[bytes, bytes]:
        """Header and footer for a rejects file holding raw records of this input."""
        decl = f'<?xml version="1.0" encoding="{self.encoding}"?>\n'.encode("ascii")
        return (decl + b"<" + self.root_name + self.namespaces + b">\n", b"</" + self.root_name + b">\n")


# --- parsing ----------------------------------------------------------------------------------------
_thread = threading.local()  # lxml parsers must not be shared between threads


def _parser() -> etree.XMLParser:
    parser = getattr(_thread, "parser", None)
    if parser is None:
        parser = _thread.parser = etree.XMLParser(**_PARSER_OPTIONS)
    return parser


def _document(context: tuple[str, bytes], raws: list[bytes]) -> bytes:
    encoding, namespaces = context
    return b"".join([f'<?xml version="1.0" encoding="{encoding}"?><w'.encode("ascii"), namespaces, b">",
                     *raws, b"</w>"])


def parse_marcxml_batch(context: tuple[str, bytes], raws: list[bytes],
                        fragments: Fragments | None = None) -> list[Record | RecordError]:
    """Parse framed `record` elements; each item is a Record or the RecordError that rejects it.

    Plain records (the shape every MARCXML writer produces) take a strict pattern-matching fast
    path; anything unusual (comments, CDATA, character references, other encodings, anything the
    patterns do not fully account for) goes through lxml, which also gives the error message.
    `fragments` (optional) collects reusable output text of the fast path's fields (see
    `_fast_record`) for `MarcXmlEncoder.encode_reusing`.
    """
    out: list[Record | RecordError | None] = [None] * len(raws)
    slow: list[int] = []
    fast = context[0].upper().replace("_", "-") in ("UTF-8", "UTF8", "US-ASCII", "ASCII")
    for i, raw in enumerate(raws):
        record = _fast_record(raw, fragments) if fast else None
        if record is None:
            slow.append(i)
        else:
            out[i] = record
    if slow:
        for i, item in zip(slow, _parse_lxml(context, [raws[i] for i in slow]), strict=True):
            out[i] = item
    return out  # type: ignore[return-value]


def _parse_lxml(context: tuple[str, bytes], raws: list[bytes]) -> list[Record | RecordError]:
    parser = _parser()
    try:
        root = etree.fromstring(_document(context, raws), parser)
    except etree.XMLSyntaxError:
        root = None
    if root is not None:
        elements = [el for el in root if isinstance(el.tag, str)]
        if len(elements) == len(raws):
            return [_convert_safe(el) for el in elements]
    out: list[Record | RecordError] = []
    for raw in raws:  # isolate the broken record(s)
        try:
            doc = etree.fromstring(_document(context, [raw]), parser)
            elements = [el for el in doc if isinstance(el.tag, str)]
            out.append(_convert_safe(elements[0]) if len(elements) == 1
                       else RecordError("record element could not be isolated", "xml-malformed"))
        except etree.XMLSyntaxError as exc:
            out.append(RecordError(f"malformed XML in record: {exc.msg}", "xml-malformed"))
    return out


# The fast path: one regex pass over the record body accounts for every character (`junk` catches
# anything else, which sends the record to lxml).
_AV = r'"[^"<&\t\n\r]*"'
_FAST_CACHE: dict[str, tuple[re.Pattern[str], re.Pattern[str]]] = {}
_RECORD_START = re.compile(r"<([A-Za-z_][\w.\-]*:)?record(?:\s+[\w.:\-]+=" + _AV + r")*\s*>")
_ATTR = re.compile(r'([\w.:\-]+)="([^"]*)"')
_AMP_OK = re.compile(r"&(?!(?:amp|lt|gt|quot|apos);)")
_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
_attr_cache: dict[str, tuple[str, str, str] | None] = {}


def _fast_patterns(prefix: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    pats = _FAST_CACHE.get(prefix)
    if pats is None:
        p = re.escape(prefix)
        field = re.compile(
            # the usual shape first (tag, ind1, ind2 in that order; no blanks between subfields; plain
            # codes): cheaper to match, and its subfields text is what the writer would write again
            # when no value holds `>` or &quot;/&apos; (see _fast_record's `fragments`)
            rf'<{p}datafield tag="([0-9A-Za-z]{{3}})" ind1="([ !#-%\'-;=?-~])" ind2="([ !#-%\'-;=?-~])">'
            rf'((?:<{p}subfield code="[0-9A-Za-z]">[^<]*</{p}subfield>)*)</{p}datafield>'
            rf"|<{p}(datafield)((?:\s+[\w.:\-]+={_AV})*)\s*>"
            rf"((?:\s|<{p}subfield code={_AV}>[^<]*</{p}subfield>)*)</{p}datafield>"
            rf"|<{p}controlfield tag=({_AV})>([^<]*)</{p}controlfield>"
            rf"|<{p}(leader)>([^<]*)</{p}leader>"
            rf"|<{p}(datafield)((?:\s+[\w.:\-]+={_AV})*)\s*/>"
            r"|(\s+)|(.)", re.S)
        sub = re.compile(rf'<{p}subfield code="([^"]*)">([^<]*)</{p}subfield>')
        pats = _FAST_CACHE[prefix] = (field, sub)
    return pats


def _field_attrs(attrs: str) -> tuple[str, str, str] | None:
    hit = _attr_cache.get(attrs, False)
    if hit is False:
        found = dict(_ATTR.findall(attrs))
        tag = found.pop("tag", None)
        ind1, ind2 = found.pop("ind1", " ") or " ", found.pop("ind2", " ") or " "
        hit = None if tag is None or found else (tag, ind1, ind2)
        if len(_attr_cache) < 10000:
            _attr_cache[attrs] = hit
    return hit  # type: ignore[return-value]


def _unescape(value: str) -> str:
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], value) if "&" in value else value


Fragments = dict[int, tuple[Field, list[tuple[str, str]], str]]


def _fast_record(raw: bytes, fragments: Fragments | None = None) -> Record | None:
    """Parse a plain record with patterns, or return None to let lxml decide.

    With `fragments`, each data field whose subfields text (without the namespace prefix) is
    exactly what MarcXmlEncoder writes for its subfields gets an entry `id(field) -> (field, copy
    of its subfields, that text)`: the encoder reuses the text while the subfields still equal the
    copy (MarcXmlEncoder.encode_reusing), instead of formatting and escaping them again."""
    if b"\r" in raw or has_illegal_bytes(raw):
        return None  # line-end normalisation and illegal characters: lxml's rules apply
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = _RECORD_START.match(text)
    if start is None:
        return None
    prefix = start.group(1) or ""
    end = f"</{prefix}record>"
    if not text.endswith(end):
        return None
    amp = "&" in text
    if amp and _AMP_OK.search(text):
        return None  # character references or unknown entities: lxml's rules apply
    field_re, sub_re = _fast_patterns(prefix)
    leader = None
    fields: list[Field] = []
    append = fields.append
    # &quot; and &apos; read as characters the writer does not escape: no text can be reused then
    reuse = fragments is not None and not prefix and not (amp and ("&quot;" in text or "&apos;" in text))
    for (ptag, pind1, pind2, pbody, is_data, dattrs, dbody, ctag, cval, is_leader, lead, is_empty, eattrs, _space,
         junk) in field_re.findall(text, start.end(), len(text) - len(end)):
        if ptag:
            subs = sub_re.findall(pbody)
            if amp and "&" in pbody:
                subs = [(c, _unescape(v)) for c, v in subs]
            field = Field(ptag, pind1, pind2, subs)
            append(field)
            if reuse and pbody.count(">") == 2 * len(subs):  # no `>` in a value (the writer escapes it)
                fragments[id(field)] = (field, subs[:], pbody)  # type: ignore[index]
        elif is_data:
            head = _field_attrs(dattrs)
            if head is None:
                return None
            subs = sub_re.findall(dbody)
            if amp and "&" in dbody:
                subs = [(c, _unescape(v)) for c, v in subs]
            append(Field(head[0], head[1], head[2], subs))
        elif ctag:
            append(Field(ctag[1:-1], " ", " ", None, _unescape(cval) if amp else cval))
        elif junk:
            return None
        elif is_leader:
            if leader is not None:
                return None
            leader = _unescape(lead) if amp else lead
        elif is_empty:
            head = _field_attrs(eattrs)
            if head is None:
                return None
            append(Field(head[0], head[1], head[2], []))
    if leader is None:
        return None
    return Record(leader, fields)


# The pass-through: a record already in exactly the form MarcXmlEncoder writes (no whitespace between
# elements, no namespace prefix, attributes in the writer's order, only the escapes it uses) comes out
# of parse + encode unchanged, so it can be copied. Text: anything but markup and the C0 controls
# XML forbids (or that lxml would normalise, CR); attribute values: printable ASCII without escapes
# (subfield codes of one or more characters, as Alma writes `aa`). Possessive quantifiers: a record
# that is not in the writer's form fails where it differs, without backtracking over everything before.
_CT = rb"[^<>&\x00-\x08\x0b-\x1f]*+(?:&(?:amp|lt|gt);[^<>&\x00-\x08\x0b-\x1f]*+)*+"
_CA = rb"[ !#-%'-;=?-~]"
_CANONICAL = re.compile(
    rb"<record><leader>(?:[ !#-%'-;=?-~]|&(?:amp|lt|gt);){24}</leader>"
    rb"(?:<controlfield tag=\"[0-9A-Za-z]{3}\">" + _CT + rb"</controlfield>"
    rb"|<datafield tag=\"[0-9A-Za-z]{3}\" ind1=\"" + _CA + rb"\" ind2=\"" + _CA + rb"\">"
    rb"(?:<subfield code=\"" + _CA + rb"++\">" + _CT + rb"</subfield>)*+</datafield>)*+</record>")


def passthrough_marcxml(raw: bytes) -> bytes | None:
    """The bytes `MarcXmlEncoder().encode(record)` would produce for the record parsed from `raw` (a
    framed `record` element of a UTF-8 document), or None when `raw` is not already in the writer's
    form (the caller then takes the full path).

    Why: MARCXML -> MARCXML with no rules mostly re-writes what Alma (and this writer) already wrote
    in the same shape; one strict pattern match in C replaces building and re-encoding every field.
    The pattern only admits what the parse -> encode round trip provably keeps byte for byte: no
    characters the writer would remove or escape differently, no entities other than the three it
    writes, valid UTF-8, no U+FFFE/U+FFFF. A record that differs only in what the parser ignores and
    the writer does not write is rewritten without it: a namespace prefix on every element
    (`<marc:record>`), attributes on its `record` tag (`xmlns=...`), whitespace between elements
    (Princeton's Alma output, indented files), and data field attributes in another order (pymarc
    writes `ind1 ind2 tag`).
    """
    out = writer_form(raw)
    return None if out is None else out + b"\n"


# a record start tag with a prefix and/or plain attributes (single spaces, printable ASCII values)
_PASS_START = re.compile(rb'<([A-Za-z_][\w.\-]*:)?record((?: [\w.:\-]+="[ !#-%\'-;=?-~]*")*)>')
# whitespace after a tag that holds elements, or after an element's end, before the next tag: not text
_BETWEEN = re.compile(rb"(<record>|</leader>|</controlfield>|</subfield>|</datafield>|<datafield [^<>]*>)"
                      rb"[ \t\r\n]++(?=<)")
_IND_FIRST = re.compile(rb'<datafield ind1="(' + _CA + rb')" ind2="(' + _CA + rb')" tag="([0-9A-Za-z]{3})">')


def writer_form(raw: bytes) -> bytes | None:
    """`raw` itself when it is a record element exactly as MarcXmlEncoder writes it, the element
    rewritten without what the parser ignores when that is all that differs, else None (see
    passthrough_marcxml)."""
    if in_writer_form(raw):
        return raw
    start = _PASS_START.match(raw)
    if start is None:
        return None
    prefix = start.group(1) or b""
    body = raw[start.end():]
    if prefix:  # every tag must carry the prefix (then no other `<` exists: text has none raw)
        if body.count(b"<") != body.count(b"<" + prefix) + body.count(b"</" + prefix):
            return None
        body = body.replace(b"</" + prefix, b"</").replace(b"<" + prefix, b"<")
    out = b"<record>" + body
    # split + join rather than sub with a template: a template is expanded in Python for every match
    if b"<datafield ind1=" in out:
        parts = _IND_FIRST.split(out)  # text, ind1, ind2, tag, text, ...
        heads = map(b'<datafield tag="%s" ind1="%s" ind2="%s">'.__mod__,
                    zip(parts[3::4], parts[1::4], parts[2::4], strict=True))
        out = b"".join(chain.from_iterable(zip(parts[0::4], heads, strict=False))) + parts[-1]
    if b">\n" in out or b">\r" in out or b">\t" in out:  # the blanks of indented and Princeton files
        out = b"".join(_BETWEEN.split(out))  # the split keeps the tag before the blanks and drops them
    return out if in_writer_form(out) else None


def in_writer_form(raw: bytes) -> bool:
    """Whether `raw` is a record element exactly as MarcXmlEncoder writes it (see passthrough_marcxml)."""
    if _CANONICAL.fullmatch(raw) is None:
        return False
    if not raw.isascii():
        if b"\xef\xbf\xbe" in raw or b"\xef\xbf\xbf" in raw:
            return False
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


_KIND: dict[str, int] = {}
for _ns in ("", "{" + NS + "}"):
    _KIND[_ns + "leader"] = 1
    _KIND[_ns + "controlfield"] = 2
    _KIND[_ns + "datafield"] = 3
    _KIND[_ns + "subfield"] = 4


def _kind(tag: object) -> int:
    if not isinstance(tag, str):
        return 0  # comment / processing instruction
    kind = _KIND.get(tag)
    if kind is None:  # another namespace URI (or a typo in it): go by the local name
        kind = _KIND.get(tag.rsplit("}", 1)[-1], -1)
    return kind


def _convert_safe(element: etree._Element) -> Record | RecordError:
    try:
        return element_to_record(element)
    except RecordError as exc:
        return exc
    except Exception as exc:  # whatever fails on one record costs that record only
        return RecordError(f"{type(exc).__name__}: {exc}", "read-exception")


def element_to_record(element: etree._Element) -> Record:
    """Turn a MARCXML `record` element into a Record."""
    leader = None
    fields: list[Field] = []
    append = fields.append
    for el in element:
        kind = _KIND.get(el.tag) or _kind(el.tag)
        if kind == 3:
            tag = el.get("tag")
            if tag is None:
                raise RecordError("datafield without a tag attribute", "xml-tag-missing")
            subs = []
            for sf in el:
                skind = _KIND.get(sf.tag) or _kind(sf.tag)
                if skind == 4:
                    subs.append((sf.get("code", ""), sf.text or ""))  # no code: kept empty, writers refuse it
                elif skind:
                    raise RecordError(f"unexpected element {sf.tag} in datafield {tag}", "xml-unexpected-element")
            append(Field(tag, el.get("ind1") or " ", el.get("ind2") or " ", subs))
        elif kind == 2:
            tag = el.get("tag")
            if tag is None:
                raise RecordError("controlfield without a tag attribute", "xml-tag-missing")
            append(Field(tag, " ", " ", None, el.text or ""))
        elif kind == 1:
            leader = el.text or ""
        elif kind:
            raise RecordError(f"unexpected element {el.tag} in record", "xml-unexpected-element")
    if leader is None:
        raise RecordError("record has no leader", "leader-missing")
    return Record(leader, fields)


_ID = re.compile(rb"<(?:[\w.\-]+:)?controlfield[^>]*?tag\s*=\s*[\"']001[\"'][^>]*>([^<]*)<")


def salvage_id(raw: bytes | None) -> str | None:
    """The 001 of a record element that did not parse, found by a pattern."""
    if not raw:
        return None
    m = _ID.search(raw[:200_000])
    return m.group(1).decode("utf-8", "replace").strip() or None if m else None


# --- writing ----------------------------------------------------------------------------------------
_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_C0 = bytes([*range(0, 9), 11, 12, *range(14, 32)])  # C0 controls XML 1.0 forbids


def has_illegal_bytes(data: bytes) -> bool:
    """Whether UTF-8 `data` holds characters XML 1.0 forbids (bytes.translate: far faster than a regex).
    U+FFFE/U+FFFF are looked for only when their lead byte 0xEF occurs at all: a one-byte search runs
    at memchr speed, a three-byte one several times slower (and 0xEF is rare in text)."""
    if len(data.translate(None, _C0)) != len(data):
        return True
    return b"\xef" in data and (b"\xef\xbf\xbe" in data or b"\xef\xbf\xbf" in data)


def _esc(value: str) -> str:
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    return value


def _attr(value: str) -> str:
    return _esc(value).replace('"', "&quot;")


_FIRST = itemgetter(0)
_SUBFIELD_FORMAT = '<subfield code="{}">{}</subfield>'.format


class _Heads(dict):
    """Start tags with their attributes escaped, built once per distinct tag/indicators/code."""

    def __init__(self, build: Callable[..., str]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, key: Any) -> str:
        value = self[key] = self._build(*key) if isinstance(key, tuple) else self._build(key)
        return value


def _tag(tag: str) -> str:
    """A tag MARCXML can hold: three characters (checked once per distinct tag, when its start tag is built)."""
    if len(tag) != 3:
        raise RecordError(f"tag {tag!r} is not 3 characters", "tag-invalid")
    return tag


class MarcXmlEncoder:
    """MARCXML `collection` in the MARC21/slim namespace, one record per line."""

    extension = "xml"

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"control_chars_removed": 0}
        self._data = _Heads(
            lambda t, i1, i2: f'<datafield tag="{_attr(_tag(t))}" ind1="{_attr(i1)}" ind2="{_attr(i2)}">')
        self._sub = _Heads(lambda c: f'<subfield code="{_attr(c)}">')
        self._control = _Heads(lambda t: f'<controlfield tag="{_attr(_tag(t))}">')

    def header(self) -> bytes:
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<collection xmlns="{NS}">\n'.encode("ascii")

    def footer(self) -> bytes:
        return b"</collection>\n"

    def _check(self, record: Record) -> None:
        """A record MARCXML cannot hold as it is: a leader that is not 24 characters once the
        characters XML forbids are removed (readers refuse the whole file over it)."""
        leader = record.leader
        if len(leader) != 24 or _ILLEGAL.search(leader):
            kept = _ILLEGAL.sub("", leader)
            if len(kept) != 24:
                removed = f" after removing {len(leader) - len(kept)} characters XML cannot hold" \
                    if len(kept) != len(leader) else ""
                raise RecordError(f"leader is {len(kept)} characters{removed}; MARCXML needs 24: {leader!r}",
                                  "leader-length")

    def _text(self, record: Record, fragments: Fragments | None = None) -> str:
        """The record element, values escaped. Plain subfield codes are formatted in C (starmap);
        a field whose text shows a markup character in a value is rebuilt with escaping. A data
        field listed in `fragments` whose subfields still equal the parsed copy reuses the parsed text
        (that text is, by construction, what this loop would produce for them)."""
        leader = record.leader
        if "&" in leader or "<" in leader or ">" in leader:
            leader = _esc(leader)
        parts = ["<record><leader>", leader, "</leader>"]
        append = parts.append
        data_heads, sub_heads, control_heads = self._data, self._sub, self._control
        for f in record.fields:
            subfields = f.subfields
            if subfields is None:
                value = f.value or ""
                if "&" in value or "<" in value or ">" in value:
                    value = _esc(value)
                append(control_heads[f.tag])
                append(value)
                append("</controlfield>")
                continue
            append(data_heads[f.tag, f.ind1, f.ind2])
            if fragments:
                hit = fragments.get(id(f))
                if hit is not None and hit[0] is f and subfields == hit[1]:
                    append(hit[2])
                    append("</datafield>")
                    continue
            codes = "".join(map(_FIRST, subfields))
            if len(codes) < len(subfields):
                raise RecordError(f"field {f.tag}: a subfield has no code", "subfield-code-missing")
            inner = None
            if codes.isalnum() and codes.isascii():
                inner = "".join(starmap(_SUBFIELD_FORMAT, subfields))
                markup = 2 * len(subfields)
                if "&" in inner or inner.count("<") != markup or inner.count(">") != markup:
                    inner = None
            if inner is None:
                inner = "".join([sub_heads[c] + _esc(v) + "</subfield>" for c, v in subfields])
            append(inner)
            append("</datafield>")
        append("</record>")
        return "".join(parts)

    def record_text(self, record: Record) -> str:
        """The `record` element as text (no namespace declaration), escaped, illegal characters removed."""
        text = self._text(record)
        if _ILLEGAL.search(text):
            text, removed = _ILLEGAL.subn("", text)
            self.counters["control_chars_removed"] += removed
        return text

    def encode(self, record: Record) -> bytes:
        return self.encode_reusing(record, None)

    def encode_reusing(self, record: Record, fragments: Fragments | None) -> bytes:
        """`encode`, reusing the parsed text of unchanged data fields (see `_fast_record`): MARCXML ->
        MARCXML with rules re-writes mostly untouched fields, and formatting them is half the cost."""
        self._check(record)
        text = self._text(record, fragments)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            data = b""
        if not data or has_illegal_bytes(data):
            text, removed = _ILLEGAL.subn("", text)
            self.counters["control_chars_removed"] += removed
            data = text.encode("utf-8")
        return data + b"\n"
