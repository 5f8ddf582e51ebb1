"""Where encoded records go: a Sink receives each record's bytes in input order.

`begin()` once, `record(record, data)` per output record, then `end(complete)` -> the
`OutputResult`s delivered, or `abort()` on failure. The default `FileSink` streams header + records
+ footer into one Destination output (a temporary name until committed). Other sinks (e.g. one
file per record) plug in through `process_file(sink_factory=...)`.

`record` is None unless the sink sets `wants_record = True`: records built in parallel workers are
only sent back to the main process when a sink needs them (e.g. to name a file after the 001).

Time-budget continuations: a sink created with `write_header=False` continues an output whose first
part was already delivered; `end(complete=False)` delivers a part without the footer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipeline.destinations.base import Destination, OutputResult
from pipeline.marc.encoders import Encoder
from pipeline.marc.record import Record

FLUSH = 1 << 20


class Sink(Protocol):
    wants_record: bool

    def begin(self) -> None: ...

    def record(self, record: Record | None, data: bytes) -> None: ...

    def end(self, complete: bool = True) -> list[OutputResult]: ...

    def abort(self) -> None: ...


SinkFactory = Callable[[Destination, str, Encoder, bool], Sink]
"""`factory(destination, stem, encoder, write_header) -> Sink`"""


class FileSink:
    """One output file `<stem>.<extension>` with the encoder's header and footer, buffered in 1 MiB writes."""

    wants_record = False

    def __init__(self, destination: Destination, relpath: str, header: bytes, footer: bytes,
                 write_header: bool = True) -> None:
        self._destination = destination
        self.relpath = relpath
        self._header = header if write_header else b""
        self._footer = footer
        self._out = None
        self._buf = bytearray()

    @classmethod
    def factory(cls, destination: Destination, stem: str, encoder: Encoder, write_header: bool) -> FileSink:
        """The default `SinkFactory`."""
        return cls(destination, f"{stem}.{encoder.extension}", encoder.header(), encoder.footer(), write_header)

    def begin(self) -> None:
        self._out = self._destination.open(self.relpath)
        self._buf += self._header

    def record(self, record: Record | None, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= FLUSH:
            self._flush()

    def write(self, data: bytes) -> None:
        """Raw bytes (already encoded), used for the rejects files."""
        self.record(None, data)

    def _flush(self) -> None:
        if self._buf:
            self._out.write(bytes(self._buf))
            self._buf.clear()

    def end(self, complete: bool = True) -> list[OutputResult]:
        if complete:
            self._buf += self._footer
        self._flush()
        return [self._out.commit()]

    def abort(self) -> None:
        self._buf.clear()
        if self._out is not None:
            self._out.abort()


class ResumableFileSink(FileSink):
    """A FileSink whose output survives the end of a process: the queue worker's continuations.

    `end(complete=False)` does not commit a part: it makes the bytes so far durable with
    `Output.checkpoint()` and keeps that state in `.checkpoint`; a sink built with `resume=` that
    state continues the same output (no header again), so a file done in several invocations is
    byte-identical to one done in one go.
    """

    def __init__(self, destination: Destination, relpath: str, header: bytes, footer: bytes,
                 write_header: bool = True, *, stem: str = "", resume: dict | None = None) -> None:
        if not write_header and resume is None:
            raise ValueError(f"{relpath}: a continuation needs the saved output state to resume from")
        super().__init__(destination, relpath, header, footer, write_header and resume is None)
        self.stem = stem
        self._resume = resume
        self.checkpoint: dict | None = None

    @classmethod
    def factory(cls, destination: Destination, stem: str, encoder: Encoder, write_header: bool,  # type: ignore[override]
                resume: dict | None = None) -> ResumableFileSink:
        return cls(destination, f"{stem}.{encoder.extension}", encoder.header(), encoder.footer(), write_header,
                   stem=stem, resume=resume)

    def begin(self) -> None:
        if self._resume is None:
            super().begin()
        else:
            self._out = self._destination.resume(self._resume)

    def end(self, complete: bool = True) -> list[OutputResult]:
        if complete:
            return super().end(True)
        self._flush()
        self.checkpoint = self._out.checkpoint()
        return []
