"""Input detection by content, never by file name: containers first, then the record format.

Containers: gzip (also multi-member), bzip2, xz, tar (plain or inside any of those), zip. Each
member of a tar or zip is its own input, in archive order. Decompression is capped: more than
`max_expanded` bytes out of one compressed stream, or more than `MAX_RATIO` times the compressed
bytes read (after the first 16 MiB), stops the file with a clear error (a gzip of zeros is a
decompression bomb; real MARC compresses about 10:1).

Formats: MARCXML (`<` first, after a BOM and whitespace), MARC-in-JSON lines (`{`), binary MARC 21
(a leader of digits or 0x1E/0x1D terminators near the start). Anything else is a file-level error.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pipeline.marc.framing import InputError

MAX_RATIO = 250
RATIO_AFTER = 16 << 20
MAX_DEPTH = 3
_EXTENSIONS = {"gz", "gzip", "tgz", "bz2", "xz", "zip", "tar", "xml", "marcxml", "mrc", "marc", "mrc21",
               "iso2709", "iso", "dat", "json", "jsonl", "ndjson", "out"}


def stem_of(name: str) -> str:
    """File name without folders, compression and format extensions: `a/b.xml.tar.gz` -> `b`."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    while "." in base:
        head, ext = base.rsplit(".", 1)
        if ext.lower() not in _EXTENSIONS or not head:
            break
        base = head
    return base or "output"


class PeekStream(io.RawIOBase):
    """A read-only stream that can look at its first bytes without consuming them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._head = b""
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            chunk = self._raw.read(max(n - len(self._head), 65536))
            if not chunk:
                break
            self._head += chunk
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                data = self._head + self._raw.read()
                self._head = b""
            else:
                data, self._head = self._head[:n], self._head[n:]
        else:
            data = self._raw.read(n) if n >= 0 else self._raw.read()
        self.consumed += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class CountingReader(io.RawIOBase):
    """Counts the bytes pulled from a stream (source bytes read; compressed bytes a decompressor used)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        self.count += len(data)
        return len(data)


class _Capped(io.RawIOBase):
    """Decompressed bytes with the size and ratio caps applied."""

    def __init__(self, inner: BinaryIO, compressed: Callable[[], int], *, name: str, kind: str,
                 max_expanded: int) -> None:
        self._inner = inner
        self._compressed = compressed
        self._name = name
        self._kind = kind
        self._max = max_expanded
        self.expanded = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
            raise InputError(f"{self._name}: broken {self._kind} data after {self.expanded:,} bytes: {exc}") from None
        self.expanded += len(data)
        if self.expanded > self._max:
            raise InputError(f"{self._name}: {self._kind} expands to more than {self._max:,} bytes "
                             "(MAX_EXPANDED_MIB); stopped as a possible decompression bomb")
        compressed = self._compressed()
        if self.expanded > RATIO_AFTER and self.expanded > MAX_RATIO * max(compressed, 1):
            raise InputError(f"{self._name}: {self._kind} expands more than {MAX_RATIO}:1 "
                             f"({self.expanded:,} bytes from {compressed:,}); stopped as a decompression bomb")
        buffer[:len(data)] = data
        return len(data)


@dataclass
class Member:
    """One input to process: a plain file or one member of a container."""

    name: str  # display name, e.g. `export.tar.gz/export.xml`
    stem: str
    stream: PeekStream
    format: str  # marcxml | marc21 | json | empty


def open_members(name: str, stream: BinaryIO, *, max_expanded: int, depth: int = 0) -> Iterator[Member]:
    """Unwrap containers and detect the format of each member, in order."""
    peek = stream if isinstance(stream, PeekStream) else PeekStream(stream)
    head = peek.peek(512)
    if depth > MAX_DEPTH:
        raise InputError(f"{name}: containers nested more than {MAX_DEPTH} deep")
    if head.startswith(b"\x1f\x8b"):
        yield from _decompressed(name, peek, lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "gzip",
                                 max_expanded, depth)
    elif head.startswith(b"BZh"):
        yield from _decompressed(name, peek, lambda f: bz2.BZ2File(f, "rb"), "bzip2", max_expanded, depth)
    elif head.startswith(b"\xfd7zXZ\x00"):
        yield from _decompressed(name, peek, lambda f: lzma.LZMAFile(f, "rb"), "xz", max_expanded, depth)
    elif head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        yield from _zip(name, peek, max_expanded, depth)
    elif len(head) >= 262 and head[257:262] == b"ustar":
        yield from _tar(name, peek, max_expanded, depth)
    else:
        yield Member(name, stem_of(name), peek, detect_format(name, peek))


def _decompressed(name: str, peek: PeekStream, opener: Callable[..., BinaryIO], kind: str,
                  max_expanded: int, depth: int) -> Iterator[Member]:
    counting = CountingReader(peek)
    inner = opener(io.BufferedReader(counting, 65536))
    capped = _Capped(inner, lambda: counting.count, name=name, kind=kind, max_expanded=max_expanded)
    inner_name = name[:-len(name.rsplit(".", 1)[-1]) - 1] if "." in name.rsplit("/", 1)[-1] else name
    if name.lower().endswith(".tgz"):
        inner_name = name[:-4] + ".tar"
    yield from open_members(inner_name, PeekStream(capped), max_expanded=max_expanded, depth=depth + 1)


def _tar(name: str, peek: PeekStream, max_expanded: int, depth: int) -> Iterator[Member]:
    try:
        with tarfile.open(fileobj=peek, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member = tar.extractfile(info)
                if member is None:
                    continue
                yield from open_members(f"{name}/{info.name}", PeekStream(member), max_expanded=max_expanded,
                                        depth=depth + 1)
    except tarfile.TarError as exc:
        raise InputError(f"{name}: broken tar archive: {exc}") from None


def _zip(name: str, peek: PeekStream, max_expanded: int, depth: int) -> Iterator[Member]:
    """zip needs random access: the archive is copied to a temporary file first (not to memory)."""
    with tempfile.TemporaryFile(prefix="marc-zip-") as spool:
        shutil.copyfileobj(peek, spool, 1 << 20)
        spool.seek(0)
        try:
            archive = zipfile.ZipFile(spool)
        except zipfile.BadZipFile as exc:
            raise InputError(f"{name}: broken zip archive: {exc}") from None
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                try:
                    inner = archive.open(info)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    raise InputError(f"{name}/{info.filename}: cannot open zip member: {exc}") from None
                with inner:
                    size = info.compress_size
                    capped = _Capped(inner, lambda size=size: size, name=f"{name}/{info.filename}", kind="zip",
                                     max_expanded=max_expanded)
                    yield from open_members(f"{name}/{info.filename}", PeekStream(capped),
                                            max_expanded=max_expanded, depth=depth + 1)


def detect_format(name: str, peek: PeekStream) -> str:
    """`marcxml`, `marc21`, `json`, or `empty`; raise InputError for anything else."""
    head = peek.peek(65536)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{name}: UTF-16 text is not supported; convert the file to UTF-8")
    text = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    text = text.lstrip(b" \t\r\n")
    if not text:
        if len(head) < 65536:
            return "empty"
    elif text[:1] == b"<":
        return "marcxml"
    elif text[:1] == b"{" and text.split(b"\n", 1)[0].strip() != b"{":
        return "json"
    elif text[:1] in b"[{":  # one pretty-printed object, or an array: read line by line, every line would be a reject
        raise InputError(f"{name}: a JSON document (an array, or a record over several lines), not MARC-in-JSON "
                         "lines; write one record per line (e.g. jq -c '.[]')")
    elif text[:5].isdigit() and len(text) >= 24:
        return "marc21"
    elif b"\x1e" in text[:4096] and b"\x1d" in text:
        return "marc21"
    if head.startswith(b"\x00" * 16):
        raise InputError(f"{name}: content starts with NUL bytes; not a MARC file")
    raise InputError(f"{name}: unknown content (not MARCXML, MARC 21 or MARC-in-JSON): {head[:40]!r}")


def max_expanded_default() -> int:
    from pipeline import settings

    return int(settings.get("MAX_EXPANDED_MIB")) << 20


def max_members_default() -> int:
    from pipeline import settings

    return int(settings.get("MAX_ARCHIVE_MEMBERS"))
