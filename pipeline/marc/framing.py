"""Cutting an input stream into raw records without parsing them.

A `Frame` carries the record's raw bytes, exactly as they were in the input (so a rejected record can
be written back in its original form), and its byte offset in the (decompressed) stream. A frame that
could not be cut cleanly carries an `error` and becomes a reject without being parsed.

With worker processes the main process does not frame record by record: it cuts the stream into
`Chunk`s, runs of whole records ending at a record end (one byte search per block), and each worker
frames its chunk with the same code, giving exactly the frames the main process would have given.
Framing is then no longer the sequential step that keeps a second core waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

BLOCK = 1 << 20  # read size
MAX_RECORD_BYTES = 8 << 20  # a single record larger than this is rejected unread (keeps memory flat)
_SPACE = b" \t\r\n\x00"
TOO_LARGE = "record-too-large"
NOT_A_RECORD = "xml-not-a-record"


class Frame(NamedTuple):
    offset: int
    raw: bytes | None  # None when the record was too large to keep
    error: str | None = None
    reason: str | None = None  # the reject's reason code when `error` is set


class Chunk(NamedTuple):
    """A run of whole records (with what lies between them) starting at stream `offset`, framed by a worker."""

    offset: int
    data: bytes


class InputError(Exception):
    """The file as a whole cannot be read (unknown format, malformed XML, size cap): a file-level error."""


def frames_terminated(stream: BinaryIO, terminator: bytes, *, what: str,
                      max_record: int = MAX_RECORD_BYTES, offset: int = 0) -> Iterator[Frame]:
    """Records ended by `terminator` (0x1D for ISO 2709, newline for JSON lines).

    Whitespace and NUL padding between records is skipped. Bytes after the last terminator become
    a frame without terminator (the parser rejects it as truncated) unless they are blank.
    """
    buf = b""
    base = offset  # stream offset of buf[0]
    skipping = False  # inside an oversized record: discard until the next terminator
    skip_start = 0
    while True:
        block = stream.read(BLOCK)
        if not block:
            break
        buf = buf + block if buf else block
        start = 0
        while True:
            end = buf.find(terminator, start)
            if end < 0:
                break
            if skipping:
                skipping = False
                yield Frame(skip_start, None,
                            f"{what} is longer than {max_record:,} bytes; not read (size limit)", TOO_LARGE)
            else:
                raw = buf[start:end + 1]
                stripped = raw.lstrip(_SPACE)
                if stripped[:-len(terminator)].strip(_SPACE):  # blank lines / empty records are padding
                    yield Frame(base + start + len(raw) - len(stripped), stripped)
            start = end + 1
        buf = buf[start:]
        base += start
        if not skipping and len(buf) > max_record:
            stripped = buf.lstrip(_SPACE)
            skip_start = base + len(buf) - len(stripped)
            skipping = True
        if skipping:
            base += len(buf)
            buf = b""
    if skipping:
        yield Frame(skip_start, None, f"{what} is longer than {max_record:,} bytes and unterminated; not read",
                    TOO_LARGE)
        return
    tail = buf.lstrip(_SPACE)
    if tail.strip(_SPACE):
        yield Frame(base + len(buf) - len(tail), tail)


class _Once:
    """A stream whose first read returns all of `data`: a chunk is framed as one buffer, as the main
    process held it (so the size limit applies to the same bytes)."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = self._data, None
        return data or b""


class _Prepend:
    """`head`, then the rest of `stream`, in reads of at most `BLOCK` after the head."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head: bytes | None = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        return self._stream.read(size)


def chunks_terminated(stream: BinaryIO, terminator: bytes, *, what: str,
                      max_record: int = MAX_RECORD_BYTES) -> Iterator[Chunk | Frame]:
    """`frames_terminated` for worker processes: each block read is cut after its last terminator and
    handed on whole. The reads and the buffer left after each are those of `frames_terminated`, so a
    record over `max_record` is met at the same point: from there on the stream is framed here."""
    buf = b""
    base = 0
    for block in iter(lambda: stream.read(BLOCK), b""):
        buf = buf + block if buf else block
        cut = buf.rfind(terminator) + 1
        if cut:
            yield Chunk(base, buf[:cut])
            buf = buf[cut:]
            base += cut
        if len(buf) > max_record:
            yield from frames_terminated(_Prepend(buf, stream), terminator, what=what,  # type: ignore[arg-type]
                                         max_record=max_record, offset=base)
            return
    if buf:
        yield Chunk(base, buf)


def frame_chunk_terminated(chunk: Chunk, terminator: bytes, *, what: str) -> Iterator[Frame]:
    """The frames of a chunk cut by `chunks_terminated` (in a worker)."""
    return frames_terminated(_Once(chunk.data), terminator, what=what, offset=chunk.offset)  # type: ignore[arg-type]
