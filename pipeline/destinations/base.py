"""The destination contract shared by the local folder and Dropbox.

An `Output` is one file being written as a stream: `write()` chunks as they are produced, then
`commit()` makes it appear at its final path all at once (never a partial file under the final
name), or `abort()` leaves nothing behind. Every output is hashed while it streams, so the report
and the manifest can name the SHA-256 and Dropbox content hash of what was delivered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

DROPBOX_BLOCK = 4 * 1024 * 1024


@dataclass
class OutputResult:
    path: str  # the final location, as the destination names it (absolute path or dropbox path)
    size: int
    sha256: str
    content_hash: str  # Dropbox content hash (SHA-256 of the SHA-256s of 4 MiB blocks)
    extra: dict[str, Any] = field(default_factory=dict)


class StreamHasher:
    """SHA-256 and the Dropbox content hash of a byte stream, computed in one pass."""

    def __init__(self) -> None:
        self.size = 0
        self._sha = hashlib.sha256()
        self._blocks: list[bytes] = []
        self._block = hashlib.sha256()
        self._block_fill = 0

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        self._sha.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), DROPBOX_BLOCK - self._block_fill)
            self._block.update(view[:take])
            self._block_fill += take
            view = view[take:]
            if self._block_fill == DROPBOX_BLOCK:
                self._blocks.append(self._block.digest())
                self._block = hashlib.sha256()
                self._block_fill = 0

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def content_hash(self) -> str:
        blocks = list(self._blocks)
        if self._block_fill:
            blocks.append(self._block.digest())
        return hashlib.sha256(b"".join(blocks)).hexdigest()


class Output(Protocol):
    path: str

    def write(self, data: bytes) -> None: ...

    def commit(self) -> OutputResult: ...

    def abort(self) -> None: ...


class Destination(Protocol):
    url: str

    def open(self, relpath: str) -> Output:
        """Start writing `relpath` (forward slashes, relative to the destination's root)."""
        ...

    def write_bytes(self, relpath: str, data: bytes) -> OutputResult:
        """Write a small file (reports, manifests) in one go, atomically."""
        ...

    def location(self, relpath: str) -> str:
        """Where `relpath` ends up, for messages and reports."""
        ...
