"""The destination contract shared by the local folder and Dropbox.

An `Output` is one file being written as a stream: `write()` chunks as they are produced, then
`commit()` makes it appear at its final path all at once (never a partial file under the final
name), or `abort()` leaves nothing behind. Every output is hashed while it streams, so the report
and the manifest can name the SHA-256 and Dropbox content hash of what was delivered.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

DROPBOX_BLOCK = 4 * 1024 * 1024


class DestinationError(Exception):
    """An output could not be delivered; the message says which file and why, in one line.

    `retryable` tells the worker whether running the same work again later may succeed (a deadline
    ran out during a Dropbox outage) or will fail the same way (bad path, no permission, bad token).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class OutputResult:
    path: str  # the final location, as the destination names it (absolute path or dropbox path)
    size: int
    sha256: str
    content_hash: str  # Dropbox content hash (SHA-256 of the SHA-256s of 4 MiB blocks)
    extra: dict[str, Any] = field(default_factory=dict)


class StreamHasher:
    """SHA-256 and the Dropbox content hash of a byte stream, computed in one pass.

    The content hash is resumable: `state()` at a 4 MiB block boundary keeps the block digests, and
    `from_state()` continues from them. SHA-256 is not (hashlib cannot export its state), so a hasher
    rebuilt from a state reports `sha256 == ""` unless the caller re-feeds the whole prefix (the local
    folder does, from its .part file).
    """

    def __init__(self) -> None:
        self.size = 0
        self._sha: Any = hashlib.sha256()
        self._blocks: list[bytes] = []
        self._block = hashlib.sha256()
        self._block_fill = 0

    @classmethod
    def of(cls, data: bytes) -> StreamHasher:
        """The hashes of one small in-memory file."""
        hasher = cls()
        hasher.update(data)
        return hasher

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._sha is not None:
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
        """Hex SHA-256 of everything so far, or "" after a resume that could not re-read the prefix."""
        return "" if self._sha is None else self._sha.hexdigest()

    @property
    def content_hash(self) -> str:
        blocks = list(self._blocks)
        if self._block_fill:
            blocks.append(self._block.digest())
        return hashlib.sha256(b"".join(blocks)).hexdigest()

    def range_content_hash(self, start: int, end: int) -> str:
        """Dropbox content hash of bytes [start, end) already fed; `start` must be block-aligned
        and `end` block-aligned or the current size. Lets uploads send a per-request hash that
        Dropbox checks, without hashing the chunk a second time."""
        if start % DROPBOX_BLOCK or (end % DROPBOX_BLOCK and end != self.size) or end > self.size:
            raise ValueError(f"range {start}-{end} is not block-aligned within {self.size} bytes")
        first, last = start // DROPBOX_BLOCK, end // DROPBOX_BLOCK
        digests = self._blocks[first:last]
        if end % DROPBOX_BLOCK:
            digests = [*digests, self._block.digest()]
        return hashlib.sha256(b"".join(digests)).hexdigest()

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state of the block-aligned prefix (the last full 4 MiB block); bytes
        after it are the caller's to keep and feed again after `from_state()`."""
        return {"size": len(self._blocks) * DROPBOX_BLOCK,
                "blocks": base64.b64encode(b"".join(self._blocks)).decode("ascii")}

    @classmethod
    def from_state(cls, state: dict[str, Any], *, sha256_of_prefix: Any = None) -> StreamHasher:
        """Rebuild from `state()`. Pass a hashlib object that already saw the prefix to keep SHA-256."""
        blob = base64.b64decode(state["blocks"])
        size = int(state["size"])
        if len(blob) % 32 or len(blob) // 32 != size // DROPBOX_BLOCK or size % DROPBOX_BLOCK:
            raise ValueError("hasher state is inconsistent (block digests do not match the size)")
        hasher = cls()
        hasher.size = size
        hasher._blocks = [blob[i : i + 32] for i in range(0, len(blob), 32)]
        hasher._sha = sha256_of_prefix
        return hasher


class Output(Protocol):
    path: str
    position: int  # bytes written so far (including bytes written before a resume)

    def write(self, data: bytes) -> None: ...

    def commit(self) -> OutputResult: ...

    def abort(self) -> None: ...

    def checkpoint(self) -> dict[str, Any]:
        """Make everything written so far durable and return a JSON-serialisable state;
        `Destination.resume(state)` continues this output, in another process, at `position`."""
        ...


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

    def delete(self, relpath: str) -> bool:
        """Remove a file (a stale `_FAILED.json` after a successful re-run); False when it was not there."""
        ...

    def resume(self, state: dict[str, Any]) -> Output:
        """Continue an output from `Output.checkpoint()`; the next write goes at `state["position"]`."""
        ...
