"""The reader registry: for each input format, how to frame a stream, parse framed records, name a
record that did not parse, and copy records a writer would write unchanged.

Why one table: the engine (in the main process and in workers) and `rules try` must read a file
exactly alike; before, each chose its framer and parser with its own branches on the format name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from pipeline.marc import marc21, marcjson, marcxml
from pipeline.marc.encoders import Encoder
from pipeline.marc.framing import Chunk, Frame, chunks_terminated, frame_chunk_terminated, frames_terminated
from pipeline.marc.record import Record, RecordError

Parsed = list[Record | RecordError]
Copy = tuple[Callable[[bytes], bytes | None], bytes]


class Framing:
    """One member's framing: `frames(chunked)` yields Frames (or, with `chunked`, Chunks for workers
    where the format allows), `context()` what parsing needs, `chunk_context()` what framing a chunk
    needs, `rejects_wrapper()` the header and footer of a file of this input's raw records."""

    def frames(self, chunked: bool = False) -> Iterator[Frame | Chunk]:
        return iter(())

    def context(self) -> Any:
        return None

    def chunk_context(self) -> Any:
        return None

    def rejects_wrapper(self) -> tuple[bytes, bytes]:
        return b"", b""


class _XmlFraming(Framing):
    def __init__(self, stream: BinaryIO) -> None:
        self.framer = marcxml.XmlFramer(stream)

    def frames(self, chunked: bool = False) -> Iterator[Frame | Chunk]:
        return self.framer.frames(chunked)

    def context(self) -> Any:
        return self.framer.context()

    def chunk_context(self) -> Any:
        return self.framer.chunk_context()

    def rejects_wrapper(self) -> tuple[bytes, bytes]:
        return self.framer.rejects_wrapper()


class _TerminatedFraming(Framing):
    def __init__(self, stream: BinaryIO, terminator: bytes, what: str, chunks: bool) -> None:
        self.stream, self.terminator, self.what, self.chunks = stream, terminator, what, chunks

    def frames(self, chunked: bool = False) -> Iterator[Frame | Chunk]:
        if chunked and self.chunks:
            return chunks_terminated(self.stream, self.terminator, what=self.what)
        return frames_terminated(self.stream, self.terminator, what=self.what)


def read_failure(exc: Exception) -> RecordError:
    """The reject for any exception a reader raised on one record (a reader bug, RecursionError on
    absurd nesting): that record's problem, never the file's."""
    if isinstance(exc, RecordError):
        return exc
    if isinstance(exc, RecursionError):
        return RecordError("record is nested too deeply to read", "read-too-deep")
    return RecordError(f"record could not be read: {type(exc).__name__}: {exc}", "read-exception")


def _parse_each(parse: Callable[..., Record], counted: bool = False) -> Callable[..., Parsed]:
    """A batch parser from a one-record parser; `counted`: it takes the batch's `counters` (salvages)."""
    def batch(context: Any, raws: list[bytes], fragments: Any = None, counters: dict[str, int] | None = None
              ) -> Parsed:
        one = partial(parse, counters=counters) if counted else parse
        out: Parsed = []
        for raw in raws:
            try:
                out.append(one(raw))
            except Exception as exc:
                out.append(read_failure(exc))
        return out
    return batch


def _parse_xml(context: Any, raws: list[bytes], fragments: Any = None, counters: dict[str, int] | None = None
               ) -> Parsed:
    try:
        return marcxml.parse_marcxml_batch(context, raws, fragments)
    except Exception as exc:  # find the record that broke the batch: parse one at a time
        if len(raws) == 1:
            return [read_failure(exc)]
        return [item for raw in raws for item in _parse_xml(context, [raw], fragments)]


def _utf8(context: Any) -> bool:
    return context[0].upper().replace("_", "-") in ("UTF-8", "UTF8", "US-ASCII", "ASCII")


@dataclass(frozen=True)
class Reader:
    """One input format. `parse(context, raws, fragments, counters)` gives a Record or the RecordError
    that rejects it for each raw record (salvages counted in `counters`); `copy(encoder, context)` the
    pass-through `(copy, suffix)` for that writer, if any: `copy(raw)` is the record's output less
    `suffix` (None: take the full path)."""

    format: str
    reject_ext: str
    framing: Callable[[BinaryIO], Framing]
    parse: Callable[..., Parsed]
    salvage: Callable[[bytes | None], str | None]
    frame_chunk: Callable[[Any, Chunk], Iterator[Frame]] | None = None
    copy: Callable[[Encoder, Any], Copy | None] = lambda encoder, context: None
    reuses_text: bool = False  # parse fills `fragments` the same format's writer reuses

    def parse_one(self, context: Any, raw: bytes) -> Record | RecordError:
        return self.parse(context, [raw], None)[0]


def _xml_copy(encoder: Encoder, context: Any) -> Copy | None:
    if type(encoder) is marcxml.MarcXmlEncoder and _utf8(context):
        return marcxml.writer_form, b"\n"
    return None


def _marc21_copy(encoder: Encoder, context: Any) -> Copy | None:
    return (marc21.passthrough_marc21, b"") if type(encoder) is marc21.Marc21Encoder else None


READERS: dict[str, Reader] = {
    "marcxml": Reader(
        "marcxml", "xml", _XmlFraming, _parse_xml, marcxml.salvage_id,
        frame_chunk=lambda root, chunk: marcxml.XmlFramer.for_chunks(root).frame_chunk(chunk),
        copy=_xml_copy, reuses_text=True),
    "marc21": Reader(
        "marc21", "mrc", lambda stream: _TerminatedFraming(stream, b"\x1d", "record", True),
        _parse_each(marc21.parse_marc21, counted=True), marc21.salvage_id,
        frame_chunk=lambda _, chunk: frame_chunk_terminated(chunk, b"\x1d", what="record"),
        copy=_marc21_copy),
    "json": Reader(
        "json", "json", lambda stream: _TerminatedFraming(stream, b"\n", "line", False),
        _parse_each(marcjson.parse_json_line), marcjson.salvage_id),
}
EMPTY = Reader("empty", "txt", lambda stream: Framing(), lambda *args: [], lambda raw: None)


def reader(fmt: str) -> Reader:
    """The reader of a detected format ("marcxml", "marc21", "json"; anything else reads no records)."""
    return READERS.get(fmt, EMPTY)
