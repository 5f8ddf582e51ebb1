"""Cutting an input stream into raw records without parsing them.

The engine frames records in the main process (cheap byte searches) and parses them in parallel
workers, so framing is the only sequential step. A `Frame` carries the record's raw bytes, exactly
as they were in the input (so a rejected record can be written back in its original form), and its
byte offset in the (decompressed) stream. A frame that could not be cut cleanly carries an `error`
and becomes a reject without being parsed.
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
