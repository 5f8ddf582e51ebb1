"""The source contract, name checks, and the resuming reader every remote source streams through.

File names come from Alma (the export stem) and from a remote listing, so each one is checked
before it is joined to the configured folder: one plain name, never a path. Remote connections
drop; a dropped transfer continues from the byte offset where the protocol allows it, otherwise it
starts again and skips what the consumer already has, so the reader never repeats or loses bytes.
"""

from __future__ import annotations

import io
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

log = logging.getLogger(__name__)

READ_BUFFER = 256 * 1024


class SourceError(OSError):
    """A source could not be reached or read; the message says where (never with secrets).

    An OSError, so code that reads files (the engine) treats it as the I/O failure it is.
    """


class SourceFileNotFound(SourceError, FileNotFoundError):
    """The file is not (or no longer) in the source folder."""


class SourceUnavailable(SourceError, ConnectionError):
    """The server could not be reached (worth another attempt, unlike a refused login)."""


class UnsafeName(SourceError, ValueError):
    """A file name that is a path (separator, `..`, absolute) and could leave the source folder."""


@dataclass(frozen=True)
class SourceEntry:
    name: str
    size: int | None


def check_name(name: str) -> str:
    """Return `name` if it is one plain file name; raise `UnsafeName` otherwise."""
    if not isinstance(name, str) or not name:
        raise UnsafeName(f"file name {name!r} is empty")
    if "/" in name or "\\" in name or "\x00" in name:
        raise UnsafeName(f"file name {name!r} contains a path separator; only plain names are allowed")
    if name.strip() in (".", "..", "~"):
        raise UnsafeName(f"file name {name!r} is not a file name")
    if len(name) > 1 and name[1] == ":" and name[0].isalpha():
        raise UnsafeName(f"file name {name!r} looks like an absolute (drive) path")
    return name


def remote_folder(path: str) -> str:
    """The folder part of an sftp/ftp URL: absolute as written; `/~/dir` is relative to the login
    folder and an empty path (or `/~`) is the login folder itself (returned as "")."""
    if path in ("", "/~", "/~/"):
        return ""
    if path.startswith("/~/"):
        return path[3:].rstrip("/")
    return path.rstrip("/") or "/"


class Source(ABC):
    """One configured folder of export files. Subclasses implement the protocol-specific parts."""

    #: where this source reads, for messages and logs (no password, no key)
    location: str = ""

    @abstractmethod
    def list(self) -> list[SourceEntry]:
        """The plain files directly in the folder (subfolders are ignored)."""

    @abstractmethod
    def open(self, name: str, offset: int = 0) -> BinaryIO:
        """A streaming binary reader of `name` from byte `offset`."""

    @abstractmethod
    def size(self, name: str) -> int:
        """The size of `name` in bytes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


class Chunks(Protocol):
    """What a protocol hands the resuming reader: read(n) -> bytes (b"" at the end), close().

    It may also have `total_size`, the file's size seen at open, so a clean close before it counts
    as a dropped connection rather than the end of the file.
    """

    def read(self, n: int) -> bytes: ...

    def close(self) -> None: ...


class ResumingReader(io.RawIOBase):
    """A raw reader over a remote file that survives dropped connections.

    `opener(offset)` returns a fresh `Chunks` positioned at `offset` (a `resumable` protocol) or at
    0 (then the reader skips to where it was). A read that raises one of `transient` errors (but not
    a `SourceError` other than `SourceUnavailable`: a missing file or a refused login is final), or
    ends before `expected_size`, reopens; after `max_reopens` reopens the error is final and names
    the file and how far it got. `expected_size` guards against a connection that closes cleanly
    mid-file, which looks like an ordinary end of file.
    """

    def __init__(self, name: str, opener: Callable[[int], Chunks], *, offset: int = 0,
                 expected_size: int | None = None, resumable: bool = True,
                 transient: tuple[type[BaseException], ...] = (OSError, EOFError),
                 max_reopens: int = 5, backoff: float = 0.5, location: str = "") -> None:
        super().__init__()
        self.name = name
        self.position = offset
        self.reopens = 0
        self._opener = opener
        self._expected = expected_size
        self._resumable = resumable
        self._transient = transient
        self._max_reopens = max_reopens
        self._backoff = backoff
        self._where = location or name
        self._chunks: Chunks | None = None
        while self._chunks is None:  # open now, so a missing file fails at open(), not at read()
            try:
                self._chunks = self._open_at(offset)
            except self._transient as exc:
                if _final(exc):
                    raise
                self._reopen(exc)
        if self._expected is None:  # the protocol may learn the size while opening
            self._expected = getattr(self._chunks, "total_size", None)

    def readable(self) -> bool:
        return True

    def _open_at(self, offset: int) -> Chunks:
        if self._resumable or offset == 0:
            return self._opener(offset)
        chunks = self._opener(0)
        skip = offset
        try:
            while skip:
                data = chunks.read(min(skip, READ_BUFFER))
                if not data:
                    raise EOFError(f"{self.name} ended before byte {offset} while skipping to it")
                skip -= len(data)
        except BaseException:
            _quiet_close(chunks)
            raise
        return chunks

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        want = len(buffer)
        if want == 0:
            return 0
        while True:
            failure: BaseException | None = None
            try:
                if self._chunks is None:
                    self._chunks = self._open_at(self.position)
                data = self._chunks.read(want)
            except self._transient as exc:
                if _final(exc):
                    raise
                failure = exc
                data = b""
            if data:
                n = len(data)
                buffer[:n] = data
                self.position += n
                return n
            if failure is None and (self._expected is None or self.position >= self._expected):
                return 0
            if failure is None:
                failure = EOFError(f"connection closed at byte {self.position} of {self._expected}")
            self._reopen(failure)

    def _reopen(self, failure: BaseException) -> None:
        if self._chunks is not None:
            _quiet_close(self._chunks)
            self._chunks = None
        if self.reopens >= self._max_reopens:
            raise SourceError(
                f"reading {self._where} failed at byte {self.position}"
                + (f" of {self._expected}" if self._expected is not None else "")
                + f" after {self.reopens} reconnects: {failure}"
            ) from failure
        self.reopens += 1
        how = "resuming at byte" if self._resumable else "restarting and skipping to byte"
        log.warning("reading %s: %s; %s %d (reconnect %d of %d)", self._where, failure or "ended early", how,
                    self.position, self.reopens, self._max_reopens)
        if self._backoff:
            time.sleep(min(8.0, self._backoff * (2 ** (self.reopens - 1))))

    def close(self) -> None:
        if self._chunks is not None:
            _quiet_close(self._chunks)
            self._chunks = None
        super().close()


def _final(exc: BaseException) -> bool:
    """Our own errors are final (missing file, refused login, replaced blob) except "unavailable"."""
    return isinstance(exc, SourceError) and not isinstance(exc, SourceUnavailable)


def _quiet_close(chunks: Chunks) -> None:
    try:
        chunks.close()
    except Exception as exc:  # a dead connection often fails to close; nothing is lost
        log.debug("closing a dropped stream: %s", exc)


def buffered(raw: io.RawIOBase) -> BinaryIO:
    """Wrap a raw reader so callers get read(n)/read()/readline() with a bounded buffer."""
    return io.BufferedReader(raw, buffer_size=READ_BUFFER)  # type: ignore[return-value]
